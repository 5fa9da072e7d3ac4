//! PostgreSQL: the connection pool and the embedded migrations.

use std::time::Duration;

use diesel::migration::MigrationSource;
use diesel::QueryableByName;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::postgres_tls::{CertificateCheck, VerifiedTls};
use crate::{ServiceError, ServiceResult};

pub type DbPool = Pool<AsyncPgConnection>;
pub type DbConn = Object<AsyncPgConnection>;
pub type PoolError = diesel_async::pooled_connection::deadpool::PoolError;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// Builds a pool; connections are opened lazily, so call [`ping`] to find out whether the
/// database is reachable.
pub fn pool(database_url: &str, max_size: usize) -> ServiceResult<DbPool> {
    let mut config = ManagerConfig::default();
    config.custom_setup = Box::new(|url| Box::pin(establish(url.to_owned())));
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(database_url, config);
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| ServiceError::Internal(format!("cannot build the PostgreSQL pool: {e}")))
}

/// How often PostgreSQL checks, while a query of a pooled connection runs or waits, that the
/// app is still there. Callers give up on a hung database (the key lookup after a second), and
/// the pool then closes the connection; without the check its backend would wait on, holding
/// a connection slot, until the lock or the query ends, and a long hang could use up every slot.
const CLIENT_CHECK: &str = "SET client_connection_check_interval = '1s'";

/// `DATABASE_URL` as tokio-postgres takes it, and what TLS checks of the server's certificate.
/// libpq's `sslmode=verify-ca` and `verify-full`, which tokio-postgres does not know, are
/// `require` with the check they name; `require` alone checks as `verify-full` does (see
/// [`crate::postgres_tls`]).
pub fn connection_config(url: &str) -> Result<(tokio_postgres::Config, CertificateCheck), String> {
    let mut check = CertificateCheck::AuthorityAndName;
    let url = match url.split_once('?') {
        Some((base, query)) => {
            let params: Vec<&str> = query
                .split('&')
                .map(|param| match param {
                    "sslmode=verify-ca" => {
                        check = CertificateCheck::AuthorityOnly;
                        "sslmode=require"
                    }
                    "sslmode=verify-full" => {
                        check = CertificateCheck::AuthorityAndName;
                        "sslmode=require"
                    }
                    other => other,
                })
                .collect();
            format!("{base}?{}", params.join("&"))
        }
        None => url.to_owned(),
    };
    let config = url.parse().map_err(|e: tokio_postgres::Error| crate::error::with_causes(&e))?;
    Ok((config, check))
}

/// As `AsyncPgConnection::establish` does it, but a failure keeps its cause: diesel-async
/// reports "error connecting to server" alone, for a closed port and an unknown host alike.
async fn establish(url: String) -> diesel::ConnectionResult<AsyncPgConnection> {
    let failed = |e: tokio_postgres::Error| diesel::ConnectionError::BadConnection(crate::error::with_causes(&e));
    let (mut config, check) = connection_config(&url).map_err(diesel::ConnectionError::BadConnection)?;
    // TLS when the URL asks for it; `prefer` (the default) stays plain: a server's self-signed
    // certificate (Debian's default) must not stop a local connection that worked. A Unix
    // socket has no TLS (libpq skips it there too): it never leaves the host.
    let over_tcp = config.get_hosts().iter().all(|host| matches!(host, tokio_postgres::config::Host::Tcp(_)));
    if !over_tcp {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    }
    let mut conn = if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        let tls = VerifiedTls::get(check).map_err(diesel::ConnectionError::BadConnection)?;
        let (client, connection) = config.connect(tls).await.map_err(failed)?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await?
    } else {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(failed)?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await?
    };
    // PostgreSQL 14 and later; an older server goes without rather than refusing to connect.
    if let Err(e) = conn.batch_execute(CLIENT_CHECK).await {
        tracing::debug!(error = %e, "client_connection_check_interval not set");
    }
    Ok(conn)
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

/// Applies every pending migration; returns the names of those applied now (none when the
/// database was up to date).
pub async fn run_migrations(database_url: &str) -> ServiceResult<Vec<String>> {
    // Connected here (keeping a failure's cause), migrated on a blocking thread: diesel's
    // migration harness is synchronous.
    let conn =
        establish(database_url.to_owned()).await.map_err(|e| ServiceError::DatabaseUnavailable(e.to_string()))?;
    let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
    tokio::task::spawn_blocking(move || -> ServiceResult<Vec<String>> {
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| ServiceError::Internal(format!("migration failed: {e}")))?;
        let known = MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
            .map_err(|e| ServiceError::Internal(format!("embedded migrations: {e}")))?;
        Ok(applied
            .iter()
            .map(|version| {
                known
                    .iter()
                    .find(|m| m.name().version() == *version)
                    .map_or_else(|| version.to_string(), |m| m.name().to_string())
            })
            .collect())
    })
    .await
    .map_err(|e| ServiceError::Internal(e.to_string()))?
}

/// The names of the embedded migrations that the database has not applied yet, oldest first.
///
/// Only reads: diesel's own `pending_migrations` first runs `CREATE TABLE IF NOT EXISTS` on its
/// bookkeeping table, which a role without `CREATE` on the schema (an app role apart from the
/// one that migrates) is refused even when the table exists. So the table diesel keeps is read
/// here directly, against diesel's list of the embedded migrations.
pub async fn pending_migrations(pool: &DbPool) -> ServiceResult<Vec<String>> {
    use diesel::sql_types::{Bool, Text};
    let embedded = MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map_err(|e| ServiceError::Internal(format!("cannot list the embedded migrations: {e}")))?;
    let mut conn = conn(pool).await?;
    let tracked: bool =
        diesel::select(diesel::dsl::sql::<Bool>("to_regclass('__diesel_schema_migrations') IS NOT NULL"))
            .get_result(&mut conn)
            .await?;
    let applied: std::collections::HashSet<String> = if tracked {
        #[derive(QueryableByName)]
        struct Applied {
            #[diesel(sql_type = Text)]
            version: String,
        }
        diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
            .load::<Applied>(&mut conn)
            .await?
            .into_iter()
            .map(|a| a.version)
            .collect()
    } else {
        Default::default()
    };
    let mut pending: Vec<(String, String)> = embedded
        .iter()
        .map(|m| (m.name().version().to_string(), m.name().to_string()))
        .filter(|(version, _)| !applied.contains(version))
        .collect();
    pending.sort();
    Ok(pending.into_iter().map(|(_, name)| name).collect())
}

#[cfg(test)]
mod tests {
    use super::connection_config;
    use crate::postgres_tls::CertificateCheck::{AuthorityAndName, AuthorityOnly};
    use tokio_postgres::config::SslMode;

    #[test]
    fn tls_is_asked_for_by_sslmode_as_libpq_spells_it() {
        let mode = |url: &str| connection_config(url).map(|(c, check)| (c.get_ssl_mode(), check));
        let base = "postgres://app:pw@db.example.com:5432/keymeter";
        assert_eq!(mode(base), Ok((SslMode::Prefer, AuthorityAndName)));
        assert_eq!(mode(&format!("{base}?sslmode=require")), Ok((SslMode::Require, AuthorityAndName)));
        assert_eq!(mode(&format!("{base}?sslmode=verify-full")), Ok((SslMode::Require, AuthorityAndName)));
        assert_eq!(mode(&format!("{base}?sslmode=verify-ca")), Ok((SslMode::Require, AuthorityOnly)));
        let (config, _) = connection_config(&format!("{base}?application_name=km&sslmode=verify-full")).unwrap();
        assert_eq!((config.get_ssl_mode(), config.get_application_name()), (SslMode::Require, Some("km")));
        assert_eq!(mode(&format!("{base}?sslmode=disable")).map(|(m, _)| m), Ok(SslMode::Disable));
        assert!(mode(&format!("{base}?sslmode=sometimes")).is_err());
        assert!(mode(&format!("{base}?sslrootcert=/ca.pem")).is_err(), "not known: SSL_CERT_FILE names the CA");
    }
}
