//! Configuration from environment variables, with defaults that match `make run`'s own
//! PostgreSQL and Redis.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use services::keys::{FailMode, FailurePolicy};

#[derive(Debug, thiserror::Error)]
#[error("invalid {var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `KEYMETER_LISTEN`: where the server listens.
    pub listen: SocketAddr,
    /// `DATABASE_URL`
    pub database_url: String,
    /// `REDIS_URL`: one Redis, or the seed nodes of a Redis Cluster separated by commas
    /// (`redis://10.0.0.1:7000,redis://10.0.0.2:7000`).
    pub redis_url: String,
    /// `KEYMETER_REDIS_CLUSTER`: `REDIS_URL` names a Redis Cluster. Implied by several nodes in
    /// `REDIS_URL`; set it when one seed node is given.
    pub redis_cluster: bool,
    /// `SMTP_URL`: outgoing mail; without it, mail goes to a local folder.
    pub smtp_url: Option<String>,
    /// `SMTP_CA_FILE`: PEM CA certificates to trust for the SMTP server's TLS certificate,
    /// besides the public roots (a relay with a private CA).
    pub smtp_ca_file: Option<PathBuf>,
    /// `KEYMETER_SITE_ROOT`: the built browser bundle and styles (`pkg/` inside).
    pub site_root: PathBuf,
    /// `KEYMETER_SECURE_COOKIES`: mark session cookies `Secure` (behind HTTPS).
    pub secure_cookies: bool,
    /// `KEYMETER_DB_POOL_SIZE`
    pub db_pool_size: usize,
    /// `KEYMETER_REDIS_POOL_SIZE`
    pub redis_pool_size: usize,
    /// `KEYMETER_USAGE_RETENTION_DAYS`: days of raw usage events kept (rollups are kept).
    pub usage_retention_days: u32,
    /// `KEYMETER_REDIS_NAMESPACE`: prefix of deployment-wide Redis keys, for deployments (or
    /// test databases) sharing one Redis.
    pub redis_namespace: String,
    /// `KEYMETER_BENCH_ROUTES`: mount the unmetered `/bench/*` routes (benchmarks only).
    pub bench_routes: bool,
    /// `KEYMETER_DEMO_TRAFFIC_KEY_FILE`: a file holding the demo key's secret; when set (and
    /// `KEYMETER_DEMO_TRAFFIC` is not `false`), the server sends itself light demo traffic.
    pub demo_traffic_key_file: Option<PathBuf>,
    /// `KEYMETER_PUBLIC_URL`: where people reach the app (links in emails).
    pub public_url: String,
    /// `KEYMETER_MAIL_DIR`: where mail goes when `SMTP_URL` is unset.
    pub mail_dir: PathBuf,
    /// `KEYMETER_MAIL_FROM`: the sender of keymeter's emails.
    pub mail_from: String,
    /// `KEYMETER_MAX_PER_HOUR` / `KEYMETER_MAX_PER_DAY`: the highest limits merchants may ask for.
    pub quota_maximum: services::quota_requests::QuotaMaximum,
    /// `KEYMETER_REDIS_TIMEOUT_MS` (quota check timeout, default 250), `KEYMETER_QUOTA_FAIL_MODE`
    /// (`open`, the default, or `closed`) and `KEYMETER_INSTANCES` (instances sharing the quota,
    /// default 1): what metered requests get while Redis is down or slow.
    pub quota_failure: FailurePolicy,
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:55432/keymeter";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:56379";

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// Layered: defaults, then whatever `lookup` returns (the environment, or a test's map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let listen = match lookup("KEYMETER_LISTEN") {
            Some(v) => v.parse().map_err(|e| ConfigError { var: "KEYMETER_LISTEN", reason: format!("{v:?}: {e}") })?,
            None => SocketAddr::from(([127, 0, 0, 1], 3000)),
        };
        let database_url = lookup("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError { var: "DATABASE_URL", reason: "must start with postgres://".into() });
        }
        let redis_url = lookup("REDIS_URL").unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned());
        // A Redis on the same host may be reached over its Unix socket (`redis+unix:///path`).
        let unix_socket = redis_url.starts_with("redis+unix://") || redis_url.starts_with("unix://");
        if !unix_socket
            && !redis_url.split(',').all(|u| u.trim().starts_with("redis://") || u.trim().starts_with("rediss://"))
        {
            return Err(ConfigError {
                var: "REDIS_URL",
                reason: "must start with redis://, rediss:// or redis+unix://".into(),
            });
        }
        let redis_cluster = parse_bool(&lookup, "KEYMETER_REDIS_CLUSTER", redis_url.contains(','))?;
        if redis_cluster && unix_socket {
            return Err(ConfigError {
                var: "REDIS_URL",
                reason: "a Redis Cluster is reached over TCP (redis://)".into(),
            });
        }
        if !redis_cluster && redis_url.contains(',') {
            return Err(ConfigError {
                var: "KEYMETER_REDIS_CLUSTER",
                reason: "REDIS_URL names several nodes, which only a Redis Cluster can use".into(),
            });
        }
        Ok(Self {
            listen,
            database_url,
            redis_url,
            redis_cluster,
            smtp_url: lookup("SMTP_URL"),
            smtp_ca_file: lookup("SMTP_CA_FILE").map(PathBuf::from),
            site_root: lookup("KEYMETER_SITE_ROOT").map(PathBuf::from).unwrap_or_else(|| "target/site".into()),
            secure_cookies: parse_bool(&lookup, "KEYMETER_SECURE_COOKIES", false)?,
            db_pool_size: parse_num(&lookup, "KEYMETER_DB_POOL_SIZE", 16)?,
            redis_pool_size: parse_num(&lookup, "KEYMETER_REDIS_POOL_SIZE", 32)?,
            demo_traffic_key_file: if parse_bool(&lookup, "KEYMETER_DEMO_TRAFFIC", true)? {
                lookup("KEYMETER_DEMO_TRAFFIC_KEY_FILE").map(PathBuf::from)
            } else {
                None
            },
            public_url: lookup("KEYMETER_PUBLIC_URL").unwrap_or_else(|| format!("http://{listen}")),
            mail_dir: lookup("KEYMETER_MAIL_DIR").map(PathBuf::from).unwrap_or_else(|| ".data/mail".into()),
            mail_from: lookup("KEYMETER_MAIL_FROM").unwrap_or_else(|| "keymeter <keymeter@localhost>".to_owned()),
            quota_maximum: services::quota_requests::QuotaMaximum {
                per_hour: parse_num(&lookup, "KEYMETER_MAX_PER_HOUR", 1_000_000)? as i64,
                per_day: parse_num(&lookup, "KEYMETER_MAX_PER_DAY", 20_000_000)? as i64,
            },
            quota_failure: FailurePolicy {
                timeout: Duration::from_millis(parse_num(&lookup, "KEYMETER_REDIS_TIMEOUT_MS", 250)? as u64),
                mode: match lookup("KEYMETER_QUOTA_FAIL_MODE").as_deref().map(str::trim) {
                    None | Some("open") => FailMode::Open,
                    Some("closed") => FailMode::Closed,
                    Some(other) => {
                        return Err(ConfigError {
                            var: "KEYMETER_QUOTA_FAIL_MODE",
                            reason: format!("{other:?} is neither open nor closed"),
                        })
                    }
                },
                instances: parse_num(&lookup, "KEYMETER_INSTANCES", 1)?.min(10_000) as u32,
            },
            bench_routes: parse_bool(&lookup, "KEYMETER_BENCH_ROUTES", false)?,
            redis_namespace: lookup("KEYMETER_REDIS_NAMESPACE").unwrap_or_else(|| "km".to_owned()),
            usage_retention_days: parse_num(&lookup, "KEYMETER_USAGE_RETENTION_DAYS", 90)?.min(36_500) as u32,
        })
    }
}

fn parse_bool(lookup: &impl Fn(&str) -> Option<String>, var: &'static str, default: bool) -> Result<bool, ConfigError> {
    match lookup(var).as_deref().map(str::trim) {
        None => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => Err(ConfigError { var, reason: format!("{other:?} is not a boolean") }),
    }
}

fn parse_num(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: usize,
) -> Result<usize, ConfigError> {
    match lookup(var) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ConfigError { var, reason: format!("{v:?} is not a positive number") }),
        },
    }
}

/// A URL fit for messages and logs: the password, if any, is replaced by `***`. A list of
/// URLs (Redis Cluster seed nodes) has each one redacted.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The last `@`: a password may contain `@` (unencoded); a query with `@` after it is
    // redacted too, which is safe.
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = with(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert!(c.smtp_url.is_none());
        assert!(!c.secure_cookies);
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert_eq!(with(&[("KEYMETER_LISTEN", "nowhere")]).unwrap_err().var, "KEYMETER_LISTEN");
        assert_eq!(with(&[("DATABASE_URL", "mysql://x")]).unwrap_err().var, "DATABASE_URL");
        assert_eq!(with(&[("KEYMETER_SECURE_COOKIES", "maybe")]).unwrap_err().var, "KEYMETER_SECURE_COOKIES");
        assert_eq!(with(&[("KEYMETER_DB_POOL_SIZE", "0")]).unwrap_err().var, "KEYMETER_DB_POOL_SIZE");
        assert_eq!(with(&[("KEYMETER_QUOTA_FAIL_MODE", "maybe")]).unwrap_err().var, "KEYMETER_QUOTA_FAIL_MODE");
        let closed = with(&[("KEYMETER_QUOTA_FAIL_MODE", "closed"), ("KEYMETER_INSTANCES", "3")]).unwrap();
        assert_eq!((closed.quota_failure.mode, closed.quota_failure.instances), (FailMode::Closed, 3));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("postgres://u:secret@h:1/db"), "postgres://u:***@h:1/db");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(redact_url("redis://:a@h:1,redis://:b@h:2"), "redis://:***@h:1,redis://:***@h:2");
        assert_eq!(redact_url("postgres://u:p@ss@w0rd@h:1/db"), "postgres://u:***@h:1/db");
    }

    #[test]
    fn redis_cluster_from_several_nodes_or_the_switch() {
        assert!(!with(&[]).unwrap().redis_cluster);
        let nodes = "redis://127.0.0.1:7001,redis://127.0.0.1:7002, redis://127.0.0.1:7003";
        assert!(with(&[("REDIS_URL", nodes)]).unwrap().redis_cluster);
        let one_seed = with(&[("REDIS_URL", "redis://127.0.0.1:7001"), ("KEYMETER_REDIS_CLUSTER", "true")]);
        assert!(one_seed.unwrap().redis_cluster);
        let err = with(&[("REDIS_URL", nodes), ("KEYMETER_REDIS_CLUSTER", "false")]).unwrap_err();
        assert_eq!(err.var, "KEYMETER_REDIS_CLUSTER");
        assert_eq!(with(&[("REDIS_URL", "redis://h:1,http://h:2")]).unwrap_err().var, "REDIS_URL");
        let socket = with(&[("REDIS_URL", "redis+unix:///run/redis/redis.sock")]).unwrap();
        assert!(!socket.redis_cluster);
        let socket_cluster = [("REDIS_URL", "redis+unix:///run/redis.sock"), ("KEYMETER_REDIS_CLUSTER", "true")];
        assert_eq!(with(&socket_cluster).unwrap_err().var, "REDIS_URL");
    }
}
