//! PostgreSQL: the connection pool and the embedded migrations.

use std::time::Duration;

use diesel::Connection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::{ServiceError, ServiceResult};

pub type DbPool = Pool<AsyncPgConnection>;
pub type DbConn = Object<AsyncPgConnection>;
pub type PoolError = diesel_async::pooled_connection::deadpool::PoolError;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// Builds a pool; connections are opened lazily, so call [`ping`] to find out whether the
/// database is reachable.
pub fn pool(database_url: &str, max_size: usize) -> ServiceResult<DbPool> {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(database_url);
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| ServiceError::Internal(format!("cannot build the PostgreSQL pool: {e}")))
}

/// Takes a connection from the pool, reporting an unreachable database as such.
pub async fn conn(pool: &DbPool) -> ServiceResult<DbConn> {
    Ok(pool.get().await?)
}

/// Round trip to PostgreSQL (`SELECT 1`).
pub async fn ping(pool: &DbPool) -> ServiceResult<()> {
    let mut conn = conn(pool).await?;
    diesel::sql_query("SELECT 1").execute(&mut conn).await?;
    Ok(())
}

/// Applies every pending migration.
pub async fn run_migrations(database_url: &str) -> ServiceResult<()> {
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || -> ServiceResult<()> {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)
            .map_err(|e| ServiceError::DatabaseUnavailable(e.to_string()))?;
        conn.run_pending_migrations(MIGRATIONS)
            .map_err(|e| ServiceError::Internal(format!("migration failed: {e}")))?;
        Ok(())
    })
    .await
    .map_err(|e| ServiceError::Internal(e.to_string()))?
}
