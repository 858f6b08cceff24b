-- stock-sync notes the outcome of a group's repairs with one row per group instead of one
-- update per product. The day Redis lost every key, 1,000,000 per-product updates were 6.9 s
-- of PostgreSQL time and 145 MB of WAL (pg_stat_statements, stock_sync bench): a third of the
-- database's work that day.
--
-- The recorded rows move to `stock_sync_mismatch_rows`, each naming the group that recorded
-- it (`repair_group`); a group whose repairs completed gets a row in
-- `stock_sync_repair_groups`. `stock_sync_mismatches` becomes a view with the same columns as
-- before, so every reader (alerts, run summaries, reports, operators' queries) is unchanged:
--   repair = the row's own outcome when one was noted on it (a refused repair, a repair by a
--            later attempt of the chunk: the latest attempt's outcome wins), else RESTORED if
--            its group completed, else NULL (pending).

ALTER TABLE stock_sync_mismatches RENAME TO stock_sync_mismatch_rows;
ALTER INDEX stock_sync_mismatches_pkey RENAME TO stock_sync_mismatch_rows_pkey;
-- NULL: recorded before groups existed, or on a path that notes every outcome on its row.
ALTER TABLE stock_sync_mismatch_rows ADD COLUMN IF NOT EXISTS repair_group uuid;
-- Outcomes are no longer updated in place on the common path: pages written from now on are
-- filled (the half-empty pages of 20261129000011 doubled the table and its WAL).
ALTER TABLE stock_sync_mismatch_rows SET (fillfactor = 100);

CREATE TABLE IF NOT EXISTS stock_sync_repair_groups (
    run_id        text NOT NULL,
    repair_group  uuid NOT NULL,
    -- Every compare-and-set of the group was answered; rows of the group without an outcome
    -- of their own were restored.
    repaired_at   timestamptz NOT NULL,
    PRIMARY KEY (run_id, repair_group)
);

CREATE VIEW stock_sync_mismatches AS
SELECT m.run_id, m.product_id, m.product_stock, m.db_stock, m.redis_stock, m.cause, m.action,
       COALESCE(m.repair, CASE WHEN g.run_id IS NOT NULL AND m.action = 'REDIS_RESTORED' THEN 'RESTORED' END) AS repair,
       m.stale_orders, m.detected_at,
       COALESCE(m.repaired_at, g.repaired_at) AS repaired_at
FROM stock_sync_mismatch_rows m
LEFT JOIN stock_sync_repair_groups g ON g.run_id = m.run_id AND g.repair_group = m.repair_group;
