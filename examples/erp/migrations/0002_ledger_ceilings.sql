-- Running totals behind the ledger's ceilings (ledger::MAX_ACCOUNT_TOTAL per account and
-- side, ledger::MAX_TENANT_TOTAL per tenant): a post raises them with a conditional
-- UPDATE in its own transaction, so no sum of a tenant's amounts can pass i64::MAX.
-- The backfill sums in two halves (quotient and remainder by 10^9), which cannot
-- overflow, and clamps ledgers written before the ceilings existed.

ALTER TABLE accounts ADD COLUMN total_debit BIGINT NOT NULL DEFAULT 0;

ALTER TABLE accounts ADD COLUMN total_credit BIGINT NOT NULL DEFAULT 0;

ALTER TABLE tenants ADD COLUMN posted_total BIGINT NOT NULL DEFAULT 0;

UPDATE accounts SET
    total_debit = (SELECT CASE WHEN COALESCE(SUM(l.debit / 1000000000), 0) > 5000000000
                     THEN 5000000000000000000
                     ELSE COALESCE(SUM(l.debit / 1000000000), 0) * 1000000000 + COALESCE(SUM(l.debit % 1000000000), 0) END
                   FROM journal_lines l WHERE l.tenant_id = accounts.tenant_id AND l.account_id = accounts.id),
    total_credit = (SELECT CASE WHEN COALESCE(SUM(l.credit / 1000000000), 0) > 5000000000
                     THEN 5000000000000000000
                     ELSE COALESCE(SUM(l.credit / 1000000000), 0) * 1000000000 + COALESCE(SUM(l.credit % 1000000000), 0) END
                   FROM journal_lines l WHERE l.tenant_id = accounts.tenant_id AND l.account_id = accounts.id);

UPDATE tenants SET
    posted_total = (SELECT CASE WHEN COALESCE(SUM(l.debit / 1000000000), 0) > 5000000000
                     THEN 5000000000000000000
                     ELSE COALESCE(SUM(l.debit / 1000000000), 0) * 1000000000 + COALESCE(SUM(l.debit % 1000000000), 0) END
                   FROM journal_lines l WHERE l.tenant_id = tenants.id)
