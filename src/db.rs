//! PostgreSQL access: the connection pool built from settings and the embedded migrations
//! (`migrations/`), applied by `db migrate`. sqlx records applied versions in
//! `_sqlx_migrations`, so applying twice is a no-op and a migration edited after it ran is
//! refused (checksum mismatch) instead of silently diverging.

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::PgPool;

use crate::config::PostgresSettings;
use crate::error::ErrorClass;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("postgres {host}:{port}/{database}: {source}")]
    Connect { host: String, port: u16, database: String, source: sqlx::Error },
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("postgres: {0}")]
    Query(#[from] sqlx::Error),
}

impl DbError {
    pub fn class(&self) -> ErrorClass {
        match self {
            DbError::Connect { source, .. } | DbError::Query(source) => crate::error::sqlx_class(source),
            DbError::Migrate(_) => ErrorClass::Fatal,
        }
    }
}

pub fn connect_options(pg: &PostgresSettings, database: &str) -> PgConnectOptions {
    let ssl = match pg.sslmode.as_str() {
        "disable" => PgSslMode::Disable,
        "allow" => PgSslMode::Allow,
        "require" => PgSslMode::Require,
        "verify-ca" => PgSslMode::VerifyCa,
        "verify-full" => PgSslMode::VerifyFull,
        _ => PgSslMode::Prefer,
    };
    let options = PgConnectOptions::new()
        .host(&pg.host)
        .port(pg.port)
        .username(&pg.user)
        .password(pg.password.expose_secret())
        .database(database)
        .ssl_mode(ssl)
        .application_name("scheduled-jobs");
    match &pg.sslrootcert {
        Some(ca) => options.ssl_root_cert(ca),
        None => options,
    }
}

/// A pool on the configured database.
/// A pool that connects on first use (a console inside `run`, up before PostgreSQL is).
pub fn connect_lazy(pg: &PostgresSettings) -> PgPool {
    PgPoolOptions::new().max_connections(2).acquire_timeout(Duration::from_secs(10)).connect_lazy_with(connect_options(pg, &pg.database))
}

/// The processor's pool (`scheduled-jobs run`): it keeps all `max_connections` open.
///
/// A chunk's effects take several connections at once (a streamed read, groups confirmed
/// while the compare goes on, the chunks started ahead), and opening one when a chunk starts
/// (a backend, TLS, SCRAM) put 150–300 ms on a stock-sync run's critical path on the 2-core
/// test machine (docs/performance.md). sqlx would also close idle connections after ten
/// minutes, i.e. before every nightly run. A long-lived processor holds the connections it
/// is allowed instead; each is still replaced after sqlx's `max_lifetime` (30 minutes).
pub async fn connect_processor(pg: &PostgresSettings) -> Result<PgPool, DbError> {
    pool(pg, PgPoolOptions::new().min_connections(pg.max_connections).idle_timeout(None)).await
}

pub async fn connect(pg: &PostgresSettings) -> Result<PgPool, DbError> {
    pool(pg, PgPoolOptions::new()).await
}

async fn pool(pg: &PostgresSettings, options: PgPoolOptions) -> Result<PgPool, DbError> {
    options
        .max_connections(pg.max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(connect_options(pg, &pg.database))
        .await
        .map_err(|source| DbError::Connect {
            host: pg.host.clone(),
            port: pg.port,
            database: pg.database.clone(),
            source,
        })
}

/// Begins a transaction on `pool` that no cancelled caller can leave open.
///
/// sqlx 0.8.6 counts a transaction as begun only once it has read BEGIN's answer, and its
/// guards roll back only a counted one. A future dropped while it waits for that answer (an
/// aborted task, as effects started ahead are stopped) returns the connection to the pool
/// inside an open transaction that nothing ends: the next borrower's statements run in it,
/// keep their row locks, and whoever needs those rows waits until the connection's
/// `max_lifetime`. That is how a processor stalled in the order-expiration bench, a chunk's
/// record waiting behind its own `STARTED` row (docs/performance.md, session 26; sqlx issues
/// #4385, #4393, fixed after 0.9.0, the newest release). The BEGIN therefore runs as a task of
/// its own, which finishes whether or not the caller still waits: a transaction nobody takes
/// is dropped like any other, i.e. rolled back before its connection is used again.
pub async fn begin(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let pool = pool.clone();
    match tokio::spawn(async move { pool.begin().await }).await {
        Ok(begun) => begun,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only a runtime shutting down cancels the task.
        Err(_) => Err(sqlx::Error::WorkerCrashed),
    }
}

/// Applies pending migrations; returns how many were applied now.
pub async fn migrate(pool: &PgPool) -> Result<usize, DbError> {
    let before: i64 = applied_count(pool).await?;
    MIGRATOR.run(pool).await?;
    let after: i64 = applied_count(pool).await?;
    Ok((after - before).max(0) as usize)
}

async fn applied_count(pool: &PgPool) -> Result<i64, DbError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
        return Ok(0);
    }
    Ok(sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success").fetch_one(pool).await?)
}
