//! Redis stock and reservations, through the same Lua scripts the Order service uses, so every
//! change is atomic on the Redis side:
//!
//! - `stock:{productId}` — available stock (integer).
//! - `reservation:{orderId}` — hash productId → quantity, while the order waits for payment.
//!
//! Each script is idempotent per order: reserving twice reserves once, releasing twice gives
//! stock back once (the reservation hash is deleted in the same script that returns its
//! quantities), paying twice consumes once. The repair used by stock-sync is a compare-and-set
//! on the value that was observed, so it never overwrites a concurrent legitimate change.
//! (The scripts touch keys derived inside them; fine on a standalone Redis, which is what the
//! platform runs.)

use redis::aio::ConnectionManager;
use redis::Script;

pub fn stock_key(product_id: &str) -> String {
    format!("stock:{product_id}")
}

pub fn reservation_key(order_id: &str) -> String {
    format!("reservation:{order_id}")
}

const RESERVE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 1, #ARGV, 2 do
  local have = tonumber(redis.call('GET', 'stock:' .. ARGV[i]) or '0')
  if have < tonumber(ARGV[i + 1]) then return -1 end
end
for i = 1, #ARGV, 2 do
  redis.call('DECRBY', 'stock:' .. ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
"#;

const RELEASE: &str = r#"
local items = redis.call('HGETALL', KEYS[1])
if #items == 0 then return 0 end
for i = 1, #items, 2 do
  redis.call('INCRBY', 'stock:' .. items[i], items[i + 1])
end
redis.call('DEL', KEYS[1])
return #items / 2
"#;

// The stock of a product several orders reserved goes back in one INCRBY (the orders of one
// chunk often share products), and the reservations go in DELs of up to 500 keys: a chunk's
// release was ~4 commands per order. Everything is read before anything is written, so a
// reservation whose quantity is not a whole number fails the call, naming it, with nothing changed.
const RELEASE_MANY: &str = r#"
local out, total, products, gone = {}, {}, {}, {}
for k = 1, #KEYS do
  local items = redis.call('HGETALL', KEYS[k])
  for i = 1, #items, 2 do
    local p, q = items[i], tonumber(items[i + 1])
    if q == nil or q ~= math.floor(q) then
      return redis.error_reply('reservation ' .. KEYS[k] .. ' holds a quantity that is not a whole number: ' .. items[i + 1])
    end
    if total[p] == nil then
      total[p] = 0
      products[#products + 1] = p
    end
    total[p] = total[p] + q
  end
  if #items > 0 then gone[#gone + 1] = KEYS[k] end
  out[k] = #items / 2
end
for _, p in ipairs(products) do
  redis.call('INCRBY', 'stock:' .. p, string.format('%d', total[p]))
end
for i = 1, #gone, 500 do
  redis.call('DEL', unpack(gone, i, math.min(i + 499, #gone)))
end
return out
"#;

const CONSUME: &str = r#"
return redis.call('DEL', KEYS[1])
"#;

// KEYS[1]: the stock key; KEYS[2..]: reservations whose field ARGV[3] (the product) is stale.
// All or nothing: the stale fields are dropped only together with the new value, so a refused
// repair leaves them for their late release to give back.
const CAS_SET: &str = r#"
local now = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if now then return 0 end
elseif now ~= ARGV[1] then
  return 0
end
for i = 2, #KEYS do
  if redis.call('HEXISTS', KEYS[i], ARGV[3]) == 0 then return 0 end
end
for i = 2, #KEYS do
  redis.call('HDEL', KEYS[i], ARGV[3])
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"#;

// `CAS_SET` for many products in one atomic round trip (stock-sync's repairs, 1,000 at a
// time: one script call instead of one per product). KEYS: the stock keys, then every
// product's stale reservation keys in order. ARGV[1]: n; then per product: observed ('' for
// missing), new value, product id, number of its reservation keys. Returns 1/0 per product.
const CAS_SET_MANY: &str = r#"
local n = tonumber(ARGV[1])
local out = {}
local r = n
for i = 1, n do
  local a = 2 + (i - 1) * 4
  local observed, new, product, stale = ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  local now = redis.call('GET', KEYS[i])
  local ok = 1
  if observed == '' then
    if now then ok = 0 end
  elseif now ~= observed then
    ok = 0
  end
  if ok == 1 then
    for j = 1, stale do
      if redis.call('HEXISTS', KEYS[r + j], product) == 0 then ok = 0 end
    end
  end
  if ok == 1 then
    for j = 1, stale do
      redis.call('HDEL', KEYS[r + j], product)
    end
    redis.call('SET', KEYS[i], new)
  end
  r = r + stale
  out[i] = ok
end
return out
"#;

/// One repair for [`Stock::compare_and_set_many`].
pub struct Cas<'a> {
    pub product_id: &'a str,
    /// The value observed (`None`: the key was missing).
    pub observed: Option<i64>,
    pub new: i64,
    /// Orders whose reservation field for this product is dropped with the new value.
    pub stale_orders: &'a [String],
}

/// Outcome of a reservation attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    Reserved,
    AlreadyReserved,
    InsufficientStock,
}

#[derive(Clone)]
pub struct Stock {
    conn: ConnectionManager,
    reserve: Script,
    release: Script,
    release_many: Script,
    consume: Script,
    cas: Script,
    cas_many: Script,
}

impl Stock {
    pub fn new(conn: ConnectionManager) -> Stock {
        Stock {
            conn,
            reserve: Script::new(RESERVE),
            release: Script::new(RELEASE),
            release_many: Script::new(RELEASE_MANY),
            consume: Script::new(CONSUME),
            cas: Script::new(CAS_SET),
            cas_many: Script::new(CAS_SET_MANY),
        }
    }

    pub async fn connect(url: &str) -> redis::RedisResult<Stock> {
        Ok(Stock::new(ConnectionManager::new(redis::Client::open(url)?).await?))
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Reserves `items` (productId, quantity) for an order: all or nothing.
    pub async fn reserve(&self, order_id: &str, items: &[(String, i64)]) -> redis::RedisResult<Reserve> {
        let mut inv = self.reserve.key(reservation_key(order_id));
        for (p, q) in items {
            inv.arg(p).arg(*q);
        }
        let r: i64 = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(match r {
            1 => Reserve::Reserved,
            0 => Reserve::AlreadyReserved,
            _ => Reserve::InsufficientStock,
        })
    }

    /// Gives an order's reserved quantities back to stock and forgets the reservation;
    /// returns how many products were released (0 if there was no reservation).
    pub async fn release(&self, order_id: &str) -> redis::RedisResult<i64> {
        self.release.key(reservation_key(order_id)).invoke_async(&mut self.conn.clone()).await
    }

    /// [`Stock::release`] for many orders in one atomic round trip; returns, per order, how
    /// many products were released.
    pub async fn release_many(&self, order_ids: &[String]) -> redis::RedisResult<Vec<i64>> {
        if order_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.release_many.prepare_invoke();
        for o in order_ids {
            inv.key(reservation_key(o));
        }
        inv.invoke_async(&mut self.conn.clone()).await
    }

    /// Payment: the reservation becomes a sale (stock stays taken).
    pub async fn consume(&self, order_id: &str) -> redis::RedisResult<bool> {
        let n: i64 = self.consume.key(reservation_key(order_id)).invoke_async(&mut self.conn.clone()).await?;
        Ok(n == 1)
    }

    /// Sets `stock:{product}` to `new` only if it still holds `observed` (`None`: missing).
    pub async fn compare_and_set(&self, product_id: &str, observed: Option<i64>, new: i64) -> redis::RedisResult<bool> {
        self.compare_and_set_dropping(product_id, observed, new, &[]).await
    }

    /// [`Stock::compare_and_set`] that also removes the product's field from the reservations
    /// of `stale_orders` (orders already resolved whose release has not happened yet), in the
    /// same atomic step, and only if every one of those fields is still there. Whatever the
    /// outcome, each stale quantity is given back exactly once: by this repair (its field is
    /// gone, so the late release skips it) or, if refused, by the late release itself.
    pub async fn compare_and_set_dropping(
        &self,
        product_id: &str,
        observed: Option<i64>,
        new: i64,
        stale_orders: &[String],
    ) -> redis::RedisResult<bool> {
        let observed = observed.map(|v| v.to_string()).unwrap_or_default();
        let mut inv = self.cas.key(stock_key(product_id));
        for o in stale_orders {
            inv.key(reservation_key(o));
        }
        let n: i64 = inv.arg(observed).arg(new).arg(product_id).invoke_async(&mut self.conn.clone()).await?;
        Ok(n == 1)
    }

    /// [`Stock::compare_and_set_dropping`] for many products in one atomic round trip (each
    /// product's repair is all or nothing on its own); returns, per product, whether it was
    /// applied.
    pub async fn compare_and_set_many(&self, repairs: &[Cas<'_>]) -> redis::RedisResult<Vec<bool>> {
        if repairs.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.cas_many.prepare_invoke();
        for r in repairs {
            inv.key(stock_key(r.product_id));
        }
        inv.arg(repairs.len());
        for r in repairs {
            for o in r.stale_orders {
                inv.key(reservation_key(o));
            }
            inv.arg(r.observed.map(|v| v.to_string()).unwrap_or_default()).arg(r.new).arg(r.product_id).arg(r.stale_orders.len());
        }
        let applied: Vec<i64> = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(applied.into_iter().map(|n| n == 1).collect())
    }

    /// Current stock of each product (`None` where the key is missing), in one round trip.
    pub async fn stocks(&self, product_ids: &[String]) -> redis::RedisResult<Vec<Option<i64>>> {
        if product_ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = product_ids.iter().map(|p| stock_key(p)).collect();
        redis::cmd("MGET").arg(keys).query_async(&mut self.conn.clone()).await
    }
}
