-- A per-user session epoch: every token and session cookie carries the epoch it was
-- issued in, and each request checks it against this column, so a logout or a password
-- change (which raise it) ends the user's sessions on every instance at once.

ALTER TABLE users ADD COLUMN session_epoch BIGINT NOT NULL DEFAULT 0
