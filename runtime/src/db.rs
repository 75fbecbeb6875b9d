//! PostgreSQL connection settings and pool construction.

use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, PgPool};

/// Database settings. The URL may carry a password, so it is a secret and never printed.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
    /// Create the database if it does not exist (development and tests).
    pub create_if_missing: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/postgres"),
            max_connections: 16,
            acquire_timeout_ms: 5_000,
            create_if_missing: false,
        }
    }
}

impl DatabaseSettings {
    pub fn with_url(url: &str) -> Self {
        Self {
            url: SecretString::from(url),
            ..Self::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL is invalid: {0}")]
    Url(sqlx::Error),
    #[error("database name `{0}` must be 1-63 characters of a-z, A-Z, 0-9 and _")]
    Name(String),
    #[error("cannot reach PostgreSQL: {0}")]
    Connect(sqlx::Error),
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Opens a pool (creating the database first when configured to).
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    let options = connect_options(settings.url.expose_secret()).map_err(DbError::Url)?;
    if settings.create_if_missing {
        create_database_if_missing(&options).await?;
    }
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        .connect_with(options.log_statements(tracing::log::LevelFilter::Trace))
        .await
        .map_err(DbError::Connect)
}

/// Every statement is planned for its parameters and the tables as they are now. PostgreSQL
/// otherwise switches a prepared statement to a generic plan after five runs and keeps it until the
/// table is next analyzed: a plan made while a table was new and empty (a seq scan, a hash join
/// over `UNNEST`) then stays while the table grows — measured on a fresh deployment at 500
/// sagas/s: a thousand seq scans of `sagas` in 30 s, the batch `UPDATE` at 8.8 ms. The services'
/// statements are short, so planning each one costs little next to that risk. (Measured again
/// on 2026-12-01 with PostgreSQL's own `auto` mode, 100 sagas/s for 30 s on fresh databases: the
/// participants' inbox lookup went generic within seconds and ran at 543 µs instead of 98.)
/// Planning is a large share of PostgreSQL's work all the same (4.7 s of 10.9 s of statement
/// time at 100 sagas/s with this setting), so transactions whose every statement has one
/// sensible plan opt out: [`begin_planned_once`].
const PLAN_CACHE_MODE: &str = "force_custom_plan";

/// Begins a transaction in which prepared statements use their generic plan, made once per
/// connection and then reused, instead of being planned at every execution. Only for
/// transactions whose statements have one sensible plan whatever their parameters and however
/// large the tables grow: inserts from arrays (`INSERT … SELECT … FROM UNNEST(…)`, with or without
/// `ON CONFLICT`, into tables without foreign keys) and statements that read no table. A
/// statement that looks rows up — a foreign key's check included — must not run in one: on a
/// table analyzed while empty, the generic plan of even a primary-key lookup is a sequential
/// scan, kept until the table is analyzed again. The setting goes with the `BEGIN`, in the same
/// round trip, and ends with the transaction.
pub async fn begin_planned_once(pool: &PgPool) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    pool.begin_with("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
        .await
}

/// Connection options from a URL. TLS follows `sslmode` (and `PGSSLMODE`) like libpq, whose
/// default is `prefer`: encrypt when the server offers it. One exception: when neither is set and
/// the server is on this machine (a loopback address or a socket), TLS is not used — it would
/// protect nothing and costs CPU on every statement (a fifth of PostgreSQL's CPU under load).
pub fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.options([("plan_cache_mode", PLAN_CACHE_MODE)]);
    let explicit = url
        .split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|kv| kv.starts_with("sslmode=")))
        || std::env::var_os("PGSSLMODE").is_some();
    if explicit || !is_local(options.get_host()) {
        return Ok(options);
    }
    Ok(options.ssl_mode(PgSslMode::Disable))
}

fn is_local(host: &str) -> bool {
    host == "localhost"
        || host.starts_with('/')
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Connects to the server's `postgres` database and creates the target database if it is missing.
pub async fn create_database_if_missing(options: &PgConnectOptions) -> Result<(), DbError> {
    let name = options.get_database().unwrap_or("postgres").to_owned();
    if name.is_empty() || name.len() > 63 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(DbError::Name(name));
    }
    let mut conn = sqlx::PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .map_err(DbError::Connect)?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut conn)
        .await
        .map_err(DbError::Connect)?;
    if !exists {
        // The name was checked above to be a plain identifier, so quoting it is enough.
        match sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it between our check and our CREATE: `duplicate_database`,
            // or, when both CREATEs run at once, a unique violation on the catalog's index (seen
            // with two orchestrator replicas starting together).
            Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
            Err(e) => return Err(DbError::Connect(e)),
        }
    }
    let _ = conn.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_left_out_only_for_a_local_server_without_an_explicit_sslmode() {
        let mode = |url: &str| format!("{:?}", connect_options(url).unwrap().get_ssl_mode());
        assert_eq!(mode("postgres://postgres@127.0.0.1:5432/db"), "Disable");
        assert_eq!(mode("postgres://postgres@localhost/db"), "Disable");
        assert_eq!(mode("postgres://postgres@[::1]:5432/db"), "Disable");
        assert_eq!(mode("postgres://db.example.internal/db"), "Prefer");
        assert_eq!(mode("postgres://127.0.0.1/db?sslmode=require"), "Require");
        assert_eq!(
            mode("postgres://u@db.example.internal/db?sslmode=verify-full&sslrootcert=/ca.crt"),
            "VerifyFull"
        );
    }
}
