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

pub async fn connect(pg: &PostgresSettings) -> Result<PgPool, DbError> {
    PgPoolOptions::new()
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
