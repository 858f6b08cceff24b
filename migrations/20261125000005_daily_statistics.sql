-- daily-statistics: the day's aggregate reads orders by four instants (created, paid,
-- cancelled, refunded), each as a range over one local day. One index per instant lets each
-- range be an index range scan (combined by a BitmapOr) instead of a scan of every order ever
-- placed; a table holding only that day is read sequentially either way. The three nullable
-- instants are indexed only where set: most orders are never cancelled or refunded, and a
-- range predicate implies IS NOT NULL, so the planner can use the partial indexes.
--
-- Production note: `orders` belongs to the Order Service and is large and busy; there these
-- indexes should be built by its owners with CREATE INDEX CONCURRENTLY (one statement per
-- migration, outside a transaction), which this dev/test migration does not do.

CREATE INDEX IF NOT EXISTS orders_created_at_idx ON orders (created_at);
CREATE INDEX IF NOT EXISTS orders_paid_at_idx ON orders (paid_at) WHERE paid_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS orders_cancelled_at_idx ON orders (cancelled_at) WHERE cancelled_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS orders_refunded_at_idx ON orders (refunded_at) WHERE refunded_at IS NOT NULL;
