-- order-expiration's record of what each chunk of a run cancelled: one row per applied chunk,
-- written in the same transaction as the cancellations (so both are committed or neither).
-- A chunk emits from it: a retry after a crash, whose UPDATE finds nothing left to cancel,
-- still finds the orders this chunk cancelled and emits the same events and releases
-- (idempotently) the same reservations. A later run never re-emits an order an earlier one
-- cancelled: its UPDATE no longer matches the order, so its own row does not list it.
-- One row per chunk rather than per order: the record costs one index entry per chunk, not
-- per order (the cancellation itself already writes each order's row). cancelled_at lives on
-- the order. No foreign key to orders: the Order service owns that table and its deletes.

CREATE TABLE IF NOT EXISTS order_expirations (
    run_id       text NOT NULL,
    chunk_index  integer NOT NULL,
    order_ids    text[] NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, chunk_index)
);
