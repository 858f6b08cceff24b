-- order-expiration's record of what each run cancelled. A row is written in the same
-- statement that cancels the order (so both are committed or neither), and it is what a chunk
-- emits from: a retry after a crash, whose UPDATE finds nothing left to cancel, still finds
-- the orders this run cancelled here and emits the same events and releases (idempotently)
-- the same reservations. Keyed by run: a later run never re-emits an order an earlier one
-- cancelled, because its UPDATE no longer matches it (status is no longer PAYMENT_WAIT).
-- No foreign key to orders: the Order service owns that table and its deletes.

CREATE TABLE IF NOT EXISTS order_expirations (
    run_id        text NOT NULL,
    order_id      text NOT NULL,
    chunk_index   integer NOT NULL,
    cancelled_at  timestamptz NOT NULL,
    PRIMARY KEY (run_id, order_id)
);
