-- The entry an Idempotency-Key posted, written in the entry's own transaction (with
-- state = 'done'), so a crash between the commit and the stored response cannot let a
-- retry post twice. The response is rebuilt from the entry when its body was not
-- stored. An index on created_at serves the purge of expired keys.

ALTER TABLE idempotency_keys ADD COLUMN entry_id TEXT NULL;

CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at)
