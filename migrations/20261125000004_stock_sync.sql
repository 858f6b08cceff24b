-- stock-sync's record of every confirmed mismatch, one row per (run, product). A chunk writes
-- the row before it touches Redis, so the alert survives a crash between the repair and the
-- Kafka commit; ON CONFLICT DO NOTHING keeps the first observation when a chunk is retried
-- (the retry may see an already repaired value). The run's finalisation emits its alerts
-- from these rows only, so a retried finalisation emits the same alerts.
-- No foreign key to products: the Product service owns that table and its deletes.

CREATE TABLE IF NOT EXISTS stock_sync_mismatches (
    run_id         text NOT NULL,
    product_id     text NOT NULL,
    -- products.stock when the mismatch was confirmed (diagnostics: negative = invalid).
    product_stock  integer NOT NULL,
    -- Expected Redis stock: products.stock minus quantities of orders still PAYMENT_WAIT.
    db_stock       bigint NOT NULL,
    -- Observed stock:{productId}; NULL when the key was missing (or held a non-integer).
    redis_stock    bigint,
    cause          text NOT NULL CHECK (cause IN ('INVALID_DB_VALUE', 'REDIS_KEY_MISSING',
                       'STALE_RESERVATION', 'MISSING_RESERVATION', 'REDIS_DRIFT')),
    action         text NOT NULL CHECK (action IN ('REDIS_RESTORED', 'MANUAL_REVIEW_REQUIRED')),
    -- What the repair did: RESTORED (compare-and-set applied, or the value was found consistent
    -- on a retry), CAS_REFUSED (Redis moved after confirmation: left for the next run),
    -- NOT_ATTEMPTED (manual review); NULL while pending (crash between record and repair, or
    -- a retry that could not confirm it again).
    repair         text CHECK (repair IN ('RESTORED', 'CAS_REFUSED', 'NOT_ATTEMPTED')),
    -- Orders whose stale reservation field for this product was removed before the repair.
    stale_orders   text[] NOT NULL DEFAULT '{}',
    detected_at    timestamptz NOT NULL,
    repaired_at    timestamptz,
    PRIMARY KEY (run_id, product_id)
);
