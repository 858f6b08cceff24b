-- Tables owned by the Order and Product services (created here for dev and tests), and the
-- processor's own bookkeeping. Money is numeric(15,2) everywhere; never float.

CREATE TABLE IF NOT EXISTS products (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    -- No CHECK (stock >= 0): stock-sync must be able to see an invalid (negative) DB value
    -- and flag it for manual review rather than have the write rejected upstream.
    stock       integer NOT NULL
);

CREATE TABLE IF NOT EXISTS orders (
    id               text PRIMARY KEY,
    user_id          text NOT NULL,
    status           text NOT NULL
                     CHECK (status IN ('PAYMENT_WAIT', 'PAYMENT_COMPLETED', 'ORDER_CANCELLED', 'REFUNDED')),
    total_amount     numeric(15,2) NOT NULL CHECK (total_amount >= 0),
    created_at       timestamptz NOT NULL,
    paid_at          timestamptz,
    cancelled_at     timestamptz,
    cancel_reason    text,
    refunded_amount  numeric(15,2) CHECK (refunded_amount >= 0),
    refunded_at      timestamptz
);

-- The expiration scan: WHERE status = 'PAYMENT_WAIT' AND created_at <= $cutoff.
CREATE INDEX IF NOT EXISTS orders_status_created_at_idx ON orders (status, created_at);

CREATE TABLE IF NOT EXISTS order_items (
    order_id    text NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_id  text NOT NULL REFERENCES products (id),
    quantity    integer NOT NULL CHECK (quantity > 0),
    unit_price  numeric(15,2) NOT NULL CHECK (unit_price >= 0),
    PRIMARY KEY (order_id, product_id)
);

CREATE INDEX IF NOT EXISTS order_items_product_id_idx ON order_items (product_id);

-- daily-statistics: one row per aggregated date, written by the run that emitted the event,
-- so "already aggregated?" has a durable answer outside Kafka too.
CREATE TABLE IF NOT EXISTS daily_statistics (
    date               date PRIMARY KEY,
    run_id             text NOT NULL,
    event_id           uuid NOT NULL,
    total_orders       bigint NOT NULL,
    total_sales        numeric(15,2) NOT NULL,
    avg_order_amount   numeric(10,2) NOT NULL,
    cancelled_orders   bigint NOT NULL,
    refund_amount      numeric(15,2) NOT NULL,
    top_products       jsonb NOT NULL,
    generated_at       timestamptz NOT NULL
);
