-- Portable SQL: runs unchanged on SQLite and PostgreSQL through sqlx's `any` driver.
-- Only TEXT and BIGINT columns, ids are UUID strings, amounts are integer minor units.
-- Every tenant-owned row carries tenant_id, and foreign keys include it.

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    username TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    created_at TEXT NOT NULL,
    UNIQUE (tenant_id, username)
);

CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    code TEXT NOT NULL,
    name TEXT NOT NULL,
    account_type TEXT NOT NULL
        CHECK (account_type IN ('asset', 'liability', 'equity', 'income', 'expense')),
    created_at TEXT NOT NULL,
    UNIQUE (tenant_id, code),
    UNIQUE (tenant_id, id)
);

CREATE TABLE journal_entries (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    entry_date TEXT NOT NULL,
    description TEXT NOT NULL,
    reverses_id TEXT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (tenant_id, id),
    -- An entry is reversed at most once.
    UNIQUE (reverses_id),
    FOREIGN KEY (tenant_id, reverses_id) REFERENCES journal_entries (tenant_id, id)
);

CREATE INDEX journal_entries_by_tenant ON journal_entries (tenant_id, created_at);

CREATE TABLE journal_lines (
    tenant_id TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    line_no BIGINT NOT NULL,
    account_id TEXT NOT NULL,
    debit BIGINT NOT NULL CHECK (debit >= 0),
    credit BIGINT NOT NULL CHECK (credit >= 0),
    memo TEXT NULL,
    PRIMARY KEY (entry_id, line_no),
    CHECK ((debit > 0 AND credit = 0) OR (credit > 0 AND debit = 0)),
    FOREIGN KEY (tenant_id, entry_id) REFERENCES journal_entries (tenant_id, id),
    FOREIGN KEY (tenant_id, account_id) REFERENCES accounts (tenant_id, id)
);

CREATE INDEX journal_lines_by_account ON journal_lines (tenant_id, account_id);

CREATE TABLE idempotency_keys (
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('in_flight', 'done')),
    status BIGINT NULL,
    body TEXT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, user_id, idem_key)
);
