//! Configuration from environment variables, with defaults that match `make run`'s own
//! PostgreSQL and Redis.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use services::keys::{FailMode, FailurePolicy, QuotaLimit, QuotaMaximum};
use services::public_url::PublicUrl;

use crate::http_server::ConnectionLimits;

#[derive(Debug, thiserror::Error)]
#[error("invalid {var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

/// (`Debug` redacts the passwords in the URLs.)
#[derive(Clone)]
pub struct Config {
    /// `KEYMETER_LISTEN`: where the server listens.
    pub listen: SocketAddr,
    /// `KEYMETER_METRICS_LISTEN`: where `/metrics` (Prometheus) is served, apart from the app
    /// so that it is never public by accident; unset, it is not served.
    pub metrics_listen: Option<SocketAddr>,
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
    /// `KEYMETER_USAGE_RETENTION_DAYS`: days of raw usage events and per-minute rollups kept (hourly and daily rollups are kept for good).
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
    pub public_url: PublicUrl,
    /// `KEYMETER_MAIL_DIR`: where mail goes when `SMTP_URL` is unset.
    pub mail_dir: PathBuf,
    /// `KEYMETER_MAIL_FROM`: the sender of keymeter's emails.
    pub mail_from: String,
    /// `KEYMETER_MAX_PER_HOUR` / `KEYMETER_MAX_PER_DAY`: the highest limits merchants may ask for.
    pub quota_maximum: services::keys::QuotaMaximum,
    /// `KEYMETER_TRUSTED_PROXIES`: addresses of reverse proxies in front of the server, separated
    /// by commas; behind them the client is the address their `X-Forwarded-For` names.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// `KEYMETER_LOG_FORMAT`: `text` (the default) or `json`.
    pub log_format: LogFormat,
    /// `RUST_LOG`: which log lines are written (checked here; empty means the default).
    pub log_filter: String,
    /// Variables set to nothing, taken as unset (warned about at startup).
    pub empty_vars: Vec<String>,
    /// `KEYMETER_REDIS_TIMEOUT_MS` (quota check timeout, default 250), `KEYMETER_QUOTA_FAIL_MODE`
    /// (`open`, the default, or `closed`) and `KEYMETER_INSTANCES` (instances sharing the quota,
    /// default 1): what metered requests get while Redis is down or slow.
    pub quota_failure: FailurePolicy,
    /// `KEYMETER_MAX_CONNECTIONS` (client connections served at once, default as many as the
    /// open-file limit allows up to 10,000) and
    /// `KEYMETER_CLIENT_TIMEOUT_SECS` (default 60): see [`ConnectionLimits`].
    pub connection_limits: ConnectionLimits,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured so that a new field cannot be left out unnoticed.
        let Self {
            listen,
            metrics_listen,
            database_url,
            redis_url,
            redis_cluster,
            smtp_url,
            smtp_ca_file,
            site_root,
            secure_cookies,
            db_pool_size,
            redis_pool_size,
            usage_retention_days,
            redis_namespace,
            bench_routes,
            demo_traffic_key_file,
            public_url,
            mail_dir,
            mail_from,
            quota_maximum,
            trusted_proxies,
            log_format,
            log_filter,
            empty_vars,
            quota_failure,
            connection_limits,
        } = self;
        f.debug_struct("Config")
            .field("listen", listen)
            .field("metrics_listen", metrics_listen)
            .field("database_url", &redact_url(database_url))
            .field("redis_url", &redact_url(redis_url))
            .field("redis_cluster", redis_cluster)
            .field("smtp_url", &smtp_url.as_deref().map(redact_url))
            .field("smtp_ca_file", smtp_ca_file)
            .field("site_root", site_root)
            .field("secure_cookies", secure_cookies)
            .field("db_pool_size", db_pool_size)
            .field("redis_pool_size", redis_pool_size)
            .field("usage_retention_days", usage_retention_days)
            .field("redis_namespace", redis_namespace)
            .field("bench_routes", bench_routes)
            .field("demo_traffic_key_file", demo_traffic_key_file)
            .field("public_url", public_url)
            .field("mail_dir", mail_dir)
            .field("mail_from", mail_from)
            .field("quota_maximum", quota_maximum)
            .field("trusted_proxies", trusted_proxies)
            .field("log_format", log_format)
            .field("log_filter", log_filter)
            .field("empty_vars", empty_vars)
            .field("quota_failure", quota_failure)
            .field("connection_limits", connection_limits)
            .finish()
    }
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Pool sizes above this are a typo, not a plan (each connection is a PostgreSQL backend or a
/// Redis client); deadpool preallocates the pool's slots, so a huge size would abort the process.
pub const MAX_POOL_SIZE: usize = 1000;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:55432/keymeter";

pub const DEFAULT_LOG_FILTER: &str = "info,tower_http=warn";

/// Every environment variable keymeter reads (README's configuration table lists the same;
/// a test holds both to it).
pub const VARIABLES: [&str; 29] = [
    "DATABASE_URL",
    "REDIS_URL",
    "KEYMETER_REDIS_CLUSTER",
    "SMTP_URL",
    "SMTP_CA_FILE",
    "KEYMETER_LISTEN",
    "KEYMETER_METRICS_LISTEN",
    "KEYMETER_SITE_ROOT",
    "KEYMETER_SECURE_COOKIES",
    "KEYMETER_DB_POOL_SIZE",
    "KEYMETER_REDIS_POOL_SIZE",
    "KEYMETER_USAGE_RETENTION_DAYS",
    "KEYMETER_REDIS_NAMESPACE",
    "KEYMETER_PUBLIC_URL",
    "KEYMETER_MAIL_DIR",
    "KEYMETER_MAIL_FROM",
    "KEYMETER_MAX_PER_HOUR",
    "KEYMETER_MAX_PER_DAY",
    "KEYMETER_REDIS_TIMEOUT_MS",
    "KEYMETER_QUOTA_FAIL_MODE",
    "KEYMETER_INSTANCES",
    "KEYMETER_TRUSTED_PROXIES",
    "KEYMETER_MAX_CONNECTIONS",
    "KEYMETER_CLIENT_TIMEOUT_SECS",
    "KEYMETER_DEMO_TRAFFIC",
    "KEYMETER_DEMO_TRAFFIC_KEY_FILE",
    "KEYMETER_BENCH_ROUTES",
    "RUST_LOG",
    "KEYMETER_LOG_FORMAT",
];
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:56379";

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Layered: defaults, then whatever `lookup` returns (the environment, or a test's map).
    pub fn from_lookup(raw: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        // Set to nothing means unset (`SMTP_URL: ${SMTP_URL}` in a compose file gives that),
        // named in a warning once logging starts (`empty_vars`); but not where the default is
        // the development setup: an empty DATABASE_URL or REDIS_URL would reach it.
        for var in ["DATABASE_URL", "REDIS_URL"] {
            if raw(var).is_some_and(|v| v.trim().is_empty()) {
                return Err(ConfigError { var, reason: "is set but empty".into() });
            }
        }
        let empty_vars = std::cell::RefCell::new(Vec::new());
        let lookup = |name: &str| match raw(name) {
            Some(v) if v.trim().is_empty() => {
                empty_vars.borrow_mut().push(name.to_owned());
                None
            }
            other => other,
        };
        let listen = match lookup("KEYMETER_LISTEN") {
            Some(v) => v.parse().map_err(|e| ConfigError { var: "KEYMETER_LISTEN", reason: format!("{v:?}: {e}") })?,
            None => SocketAddr::from(([127, 0, 0, 1], 3000)),
        };
        let database_url = lookup("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError { var: "DATABASE_URL", reason: "must start with postgres://".into() });
        }
        // An option tokio-postgres does not take (a misspelt `sslmode`) is named now, not at
        // the first connection.
        if let Err(reason) = services::db::connection_config(&database_url) {
            return Err(ConfigError { var: "DATABASE_URL", reason });
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
        let metrics_listen = match lookup("KEYMETER_METRICS_LISTEN") {
            Some(v) => Some(v.trim().parse().map_err(|e| ConfigError {
                var: "KEYMETER_METRICS_LISTEN",
                reason: format!("{v:?}: {e} (an address and port, e.g. 127.0.0.1:9464)"),
            })?),
            None => None,
        };
        if metrics_listen.is_some_and(|m: SocketAddr| m.port() != 0 && m == listen) {
            return Err(ConfigError {
                var: "KEYMETER_METRICS_LISTEN",
                reason: "is the app's own address (KEYMETER_LISTEN): the metrics need a port of their own".into(),
            });
        }
        let public_url = match lookup("KEYMETER_PUBLIC_URL") {
            Some(url) => PublicUrl::parse(url.trim())
                .map_err(|e| ConfigError { var: "KEYMETER_PUBLIC_URL", reason: e.to_string() })?,
            None => PublicUrl::listening_on(listen),
        };
        Ok(Self {
            listen,
            metrics_listen,
            database_url,
            redis_url,
            redis_cluster,
            smtp_url: lookup("SMTP_URL"),
            smtp_ca_file: lookup("SMTP_CA_FILE").map(PathBuf::from),
            site_root: lookup("KEYMETER_SITE_ROOT").map(PathBuf::from).unwrap_or_else(|| "target/site".into()),
            // Served over HTTPS: a cookie that may also travel over plain HTTP (a typed
            // `http://` address, a stripped redirect) would give the session away.
            secure_cookies: parse_bool(&lookup, "KEYMETER_SECURE_COOKIES", public_url.is_https())?,
            db_pool_size: parse_bounded(&lookup, "KEYMETER_DB_POOL_SIZE", 16, MAX_POOL_SIZE)?,
            redis_pool_size: parse_bounded(&lookup, "KEYMETER_REDIS_POOL_SIZE", 32, MAX_POOL_SIZE)?,
            demo_traffic_key_file: if parse_bool(&lookup, "KEYMETER_DEMO_TRAFFIC", true)? {
                lookup("KEYMETER_DEMO_TRAFFIC_KEY_FILE").map(PathBuf::from)
            } else {
                None
            },
            public_url,
            mail_dir: lookup("KEYMETER_MAIL_DIR").map(PathBuf::from).unwrap_or_else(|| ".data/mail".into()),
            mail_from: match lookup("KEYMETER_MAIL_FROM") {
                Some(from) => {
                    services::mailer::check_sender(&from)
                        .map_err(|e| ConfigError { var: "KEYMETER_MAIL_FROM", reason: format!("{from:?}: {e}") })?;
                    from
                }
                None => "keymeter <keymeter@localhost>".to_owned(),
            },
            quota_maximum: QuotaMaximum {
                per_hour: parse_bounded(
                    &lookup,
                    "KEYMETER_MAX_PER_HOUR",
                    QuotaMaximum::default().per_hour,
                    QuotaLimit::MAX,
                )?,
                per_day: parse_bounded(
                    &lookup,
                    "KEYMETER_MAX_PER_DAY",
                    QuotaMaximum::default().per_day,
                    QuotaLimit::MAX,
                )?,
            },
            log_format: match lookup("KEYMETER_LOG_FORMAT").as_deref().map(str::trim) {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(ConfigError {
                        var: "KEYMETER_LOG_FORMAT",
                        reason: format!("{other:?} is neither text nor json"),
                    })
                }
            },
            log_filter: match lookup("RUST_LOG") {
                None => DEFAULT_LOG_FILTER.to_owned(),
                Some(filter) => {
                    // Refused rather than ignored: a typo would otherwise silence or flood the log.
                    tracing_subscriber::EnvFilter::try_new(&filter)
                        .map_err(|e| ConfigError { var: "RUST_LOG", reason: format!("{filter:?}: {e}") })?;
                    filter
                }
            },
            quota_failure: FailurePolicy {
                // Beyond a minute a quota check would hold requests rather than fail over.
                timeout: Duration::from_millis(parse_bounded(
                    &lookup,
                    "KEYMETER_REDIS_TIMEOUT_MS",
                    FailurePolicy::default().timeout.as_millis() as u64,
                    60_000,
                )?),
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
                instances: parse_bounded(&lookup, "KEYMETER_INSTANCES", 1u32, 10_000)?,
            },
            bench_routes: parse_bool(&lookup, "KEYMETER_BENCH_ROUTES", false)?,
            connection_limits: {
                let default = ConnectionLimits::default();
                ConnectionLimits {
                    max_connections: match lookup("KEYMETER_MAX_CONNECTIONS") {
                        None => None,
                        Some(_) => Some(parse_bounded(&lookup, "KEYMETER_MAX_CONNECTIONS", 1usize, 1_000_000)?),
                    },
                    // Beyond an hour a stuck client is not told apart from a slow one.
                    client_timeout: Duration::from_secs(parse_bounded(
                        &lookup,
                        "KEYMETER_CLIENT_TIMEOUT_SECS",
                        default.client_timeout.as_secs(),
                        3_600,
                    )?),
                }
            },
            trusted_proxies: match lookup("KEYMETER_TRUSTED_PROXIES") {
                None => Vec::new(),
                Some(list) => list
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(|a| {
                        a.parse().map_err(|_| ConfigError {
                            var: "KEYMETER_TRUSTED_PROXIES",
                            reason: format!("{a:?} is not an IP address"),
                        })
                    })
                    .collect::<Result<_, _>>()?,
            },
            redis_namespace: lookup("KEYMETER_REDIS_NAMESPACE").unwrap_or_else(|| "km".to_owned()),
            // A hundred years: raw events are dropped by whole days, so more means never.
            usage_retention_days: parse_bounded(
                &lookup,
                "KEYMETER_USAGE_RETENTION_DAYS",
                services::housekeeping::DEFAULT_USAGE_RETENTION_DAYS,
                36_500,
            )?,
            empty_vars: empty_vars.take(),
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

/// A whole number from 1 to `max`.
fn parse_bounded<T>(
    lookup: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
    max: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + From<u8> + std::fmt::Display,
{
    let Some(v) = lookup(var) else {
        return Ok(default);
    };
    match v.trim().parse::<T>() {
        Ok(n) if n >= T::from(1) && n <= max => Ok(n),
        // Also digits too many for the type: the number is too large, not malformed.
        Ok(_) | Err(_) if !v.trim().is_empty() && v.trim().bytes().all(|b| b.is_ascii_digit()) => {
            Err(ConfigError { var, reason: format!("{v:?} is out of range: give a number from 1 to {max}") })
        }
        _ => Err(ConfigError { var, reason: format!("{v:?} is not a positive whole number") }),
    }
}

/// A URL fit for messages and logs: the password in it, if any, is replaced by `***`, whether
/// in the user info (`user:pass@`) or in the query (`?password=…`, as libpq and Redis accept).
/// A list of URLs (Redis Cluster seed nodes) has each one redacted.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The last `@`: a password may contain `@` (unencoded); a query with `@` after it is
    // redacted too, which is safe.
    let rest = match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => rest.to_owned(),
        },
        None => rest.to_owned(),
    };
    let rest = match rest.split_once('?') {
        Some((path, query)) => {
            let pairs = query.split('&').map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret_parameter(name) => format!("{name}=***"),
                _ => pair.to_owned(),
            });
            format!("{path}?{}", pairs.collect::<Vec<_>>().join("&"))
        }
        None => rest,
    };
    format!("{scheme}://{rest}")
}

/// `password`, `sslpassword`, `passwd`, `secret`, `token`, …: a query parameter worth hiding.
fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "secret", "token"].iter().any(|word| name.contains(word))
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
    fn debug_output_hides_the_passwords_in_urls() {
        let c = with(&[
            ("DATABASE_URL", "postgres://app:pg-secret@db/keymeter"),
            ("REDIS_URL", "redis://:redis-secret@cache:6379"),
            ("SMTP_URL", "smtps://mailer:smtp-secret@mail.example.com"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        for secret in ["pg-secret", "redis-secret", "smtp-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("db/keymeter") && shown.contains("mail.example.com"), "{shown}");
    }

    #[test]
    fn defaults() {
        let c = with(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert!(c.smtp_url.is_none());
        assert!(!c.secure_cookies);
        assert_eq!(c.metrics_listen, None, "metrics are served only when asked for");
    }

    #[test]
    fn metrics_need_an_address_of_their_own() {
        let err = with(&[("KEYMETER_METRICS_LISTEN", "9464")]).unwrap_err();
        assert_eq!(err.var, "KEYMETER_METRICS_LISTEN");
        assert!(err.reason.contains("127.0.0.1:9464"), "says what it takes: {err}");
        let same = [("KEYMETER_LISTEN", "0.0.0.0:8080"), ("KEYMETER_METRICS_LISTEN", "0.0.0.0:8080")];
        assert_eq!(with(&same).unwrap_err().var, "KEYMETER_METRICS_LISTEN");
        let apart = with(&[("KEYMETER_METRICS_LISTEN", "10.0.0.5:9464")]).unwrap();
        assert_eq!(apart.metrics_listen, Some("10.0.0.5:9464".parse().unwrap()));
    }

    #[test]
    fn set_but_empty_means_unset_except_for_the_databases() {
        for var in ["DATABASE_URL", "REDIS_URL"] {
            let err = with(&[(var, " ")]).unwrap_err();
            assert_eq!(err.var, var);
            assert!(err.reason.contains("empty"), "{err}");
        }
        for var in VARIABLES.into_iter().filter(|v| !["DATABASE_URL", "REDIS_URL"].contains(v)) {
            let config = with(&[(var, " ")]).unwrap_or_else(|e| panic!("{var}: {e}"));
            assert_eq!(config.empty_vars, [var], "named for the startup warning");
        }
        let config = with(&[("SMTP_URL", ""), ("RUST_LOG", "")]).unwrap();
        assert_eq!((config.smtp_url, config.log_filter.as_str()), (None, DEFAULT_LOG_FILTER));
    }

    #[test]
    fn a_log_filter_that_does_not_parse_is_refused() {
        assert_eq!(with(&[("RUST_LOG", "info,[[[bad")]).unwrap_err().var, "RUST_LOG");
        assert_eq!(with(&[("RUST_LOG", "debug,hyper=warn")]).unwrap().log_filter, "debug,hyper=warn");
    }

    #[test]
    fn every_variable_read_is_listed_here_and_in_the_readme() {
        let asked = std::sync::Mutex::new(std::collections::BTreeSet::new());
        Config::from_lookup(|name| {
            asked.lock().unwrap().insert(name.to_owned());
            None
        })
        .unwrap();
        let listed: std::collections::BTreeSet<String> = VARIABLES.iter().map(|v| v.to_string()).collect();
        assert_eq!(asked.into_inner().unwrap(), listed);
        let readme = include_str!("../../README.md");
        for var in VARIABLES {
            assert!(readme.contains(&format!("`{var}`")), "{var} is not in README.md's configuration table");
        }
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert_eq!(with(&[("KEYMETER_LISTEN", "nowhere")]).unwrap_err().var, "KEYMETER_LISTEN");
        assert_eq!(with(&[("DATABASE_URL", "mysql://x")]).unwrap_err().var, "DATABASE_URL");
        let misspelt = with(&[("DATABASE_URL", "postgres://app:pg-secret@db/keymeter?sslmode=requir")]).unwrap_err();
        assert_eq!(misspelt.var, "DATABASE_URL");
        assert!(misspelt.reason.contains("sslmode") && !misspelt.reason.contains("pg-secret"), "{}", misspelt.reason);
        assert_eq!(with(&[("KEYMETER_SECURE_COOKIES", "maybe")]).unwrap_err().var, "KEYMETER_SECURE_COOKIES");
        // Served over HTTPS, cookies are `Secure` unless the operator says otherwise.
        let https = ("KEYMETER_PUBLIC_URL", "https://keymeter.example.com");
        assert!(with(&[https]).unwrap().secure_cookies);
        assert!(!with(&[https, ("KEYMETER_SECURE_COOKIES", "false")]).unwrap().secure_cookies);
        assert!(!with(&[("KEYMETER_PUBLIC_URL", "http://10.0.0.5:3000")]).unwrap().secure_cookies);
        assert_eq!(with(&[("KEYMETER_DB_POOL_SIZE", "0")]).unwrap_err().var, "KEYMETER_DB_POOL_SIZE");
        assert_eq!(with(&[("KEYMETER_QUOTA_FAIL_MODE", "maybe")]).unwrap_err().var, "KEYMETER_QUOTA_FAIL_MODE");
        let err = with(&[("KEYMETER_TRUSTED_PROXIES", "10.0.0.2, proxy.internal")]).unwrap_err();
        assert_eq!(err.var, "KEYMETER_TRUSTED_PROXIES");
        assert!(err.reason.contains("proxy.internal"), "{err}");
        let proxies = with(&[("KEYMETER_TRUSTED_PROXIES", "10.0.0.2, ::1,")]).unwrap().trusted_proxies;
        assert_eq!(proxies, ["10.0.0.2".parse::<std::net::IpAddr>().unwrap(), "::1".parse().unwrap()]);
        let closed = with(&[("KEYMETER_QUOTA_FAIL_MODE", "closed"), ("KEYMETER_INSTANCES", "3")]).unwrap();
        assert_eq!((closed.quota_failure.mode, closed.quota_failure.instances), (FailMode::Closed, 3));
    }

    #[test]
    fn numbers_are_bounded_and_name_their_variable() {
        for var in ["KEYMETER_DB_POOL_SIZE", "KEYMETER_REDIS_POOL_SIZE"] {
            for bad in ["18446744073709551615", "1000000000000", "1001", "0", "-1", "ten"] {
                let err = with(&[(var, bad)]).unwrap_err();
                assert_eq!(err.var, var, "{bad}");
            }
            assert!(with(&[(var, "1000")]).is_ok());
        }
        assert_eq!(with(&[("KEYMETER_DB_POOL_SIZE", "1000")]).unwrap().db_pool_size, 1000);
        for var in ["KEYMETER_MAX_PER_HOUR", "KEYMETER_MAX_PER_DAY"] {
            for bad in ["18446744073709551615", "9223372036854775808", "1000000000001", "0", "-1"] {
                let err = with(&[(var, bad)]).unwrap_err();
                assert_eq!(err.var, var, "{bad}");
                assert!(!err.to_string().contains("-1 "), "{err}");
            }
        }
        let limits = with(&[]).unwrap().connection_limits;
        assert_eq!((limits.max_connections, limits.client_timeout.as_secs()), (None, 60));
        let limits = with(&[("KEYMETER_MAX_CONNECTIONS", "64"), ("KEYMETER_CLIENT_TIMEOUT_SECS", "5")])
            .unwrap()
            .connection_limits;
        assert_eq!((limits.max_connections, limits.client_timeout), (Some(64), Duration::from_secs(5)));
        for var in ["KEYMETER_MAX_CONNECTIONS", "KEYMETER_CLIENT_TIMEOUT_SECS"] {
            assert_eq!(with(&[(var, "0")]).unwrap_err().var, var);
        }
        let max = with(&[("KEYMETER_MAX_PER_HOUR", "1000000000000")]).unwrap().quota_maximum;
        assert_eq!(max.per_hour, QuotaLimit::MAX);
        // Refused, not quietly clamped: an operator who asks for more than is possible is told.
        for (var, bad, good) in [
            ("KEYMETER_INSTANCES", "10001", "10000"),
            ("KEYMETER_USAGE_RETENTION_DAYS", "36501", "36500"),
            ("KEYMETER_REDIS_TIMEOUT_MS", "60001", "60000"),
            ("KEYMETER_MAX_CONNECTIONS", "1000001", "1000000"),
            ("KEYMETER_CLIENT_TIMEOUT_SECS", "3601", "3600"),
        ] {
            let err = with(&[(var, bad)]).unwrap_err();
            assert_eq!(err.var, var);
            assert!(err.to_string().contains("out of range"), "{err}");
            assert!(with(&[(var, good)]).is_ok(), "{var}={good}");
        }
    }

    #[test]
    fn formats_urls_and_addresses_are_checked() {
        for bad in ["JSON", "xml", "Text"] {
            assert_eq!(with(&[("KEYMETER_LOG_FORMAT", bad)]).unwrap_err().var, "KEYMETER_LOG_FORMAT", "{bad}");
        }
        assert_eq!(with(&[("KEYMETER_LOG_FORMAT", "json")]).unwrap().log_format, LogFormat::Json);
        assert_eq!(with(&[]).unwrap().log_format, LogFormat::Text);
        for bad in [
            "example.com",
            "ftp://example.com",
            "https://",
            "http:// x",
            "javascript:alert(1)",
            "https://user:pw@km.example.com",
            "https://km.example.com/?a=1",
            "https://km.example.com/#top",
            "https://km.example.com:99999",
            "https://km.example.com:0",
        ] {
            assert_eq!(with(&[("KEYMETER_PUBLIC_URL", bad)]).unwrap_err().var, "KEYMETER_PUBLIC_URL", "{bad}");
        }
        let url = with(&[("KEYMETER_PUBLIC_URL", "https://keymeter.example.com/app")]).unwrap().public_url;
        assert_eq!(url.as_str(), "https://keymeter.example.com/app");
        let url = with(&[("KEYMETER_PUBLIC_URL", " https://keymeter.example.com/")]).unwrap().public_url;
        assert_eq!(url.as_str(), "https://keymeter.example.com", "links are made by appending paths");
        for good in ["https://km.example.com:8443", "http://[::1]", "http://[::1]:3000"] {
            assert_eq!(with(&[("KEYMETER_PUBLIC_URL", good)]).unwrap().public_url.as_str(), good);
        }
        // Unset: where the server listens, with a host a link can use.
        assert_eq!(with(&[("KEYMETER_LISTEN", "0.0.0.0:8080")]).unwrap().public_url.as_str(), "http://localhost:8080");
        assert_eq!(
            with(&[("KEYMETER_LISTEN", "127.0.0.1:8080")]).unwrap().public_url.as_str(),
            "http://127.0.0.1:8080"
        );
        for bad in ["not an address", "bad from", "a\"<script>@b.com"] {
            assert_eq!(with(&[("KEYMETER_MAIL_FROM", bad)]).unwrap_err().var, "KEYMETER_MAIL_FROM", "{bad}");
        }
        assert!(with(&[("KEYMETER_MAIL_FROM", "Billing <billing@example.com>")]).is_ok());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("postgres://u:secret@h:1/db"), "postgres://u:***@h:1/db");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(redact_url("redis://:a@h:1,redis://:b@h:2"), "redis://:***@h:1,redis://:***@h:2");
        assert_eq!(redact_url("postgres://u:p@ss@w0rd@h:1/db"), "postgres://u:***@h:1/db");
        assert_eq!(redact_url("postgres://u:pa?ss@h:1/db"), "postgres://u:***@h:1/db");
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:1/db?password=X&sslmode=require"),
            "postgres://postgres@127.0.0.1:1/db?password=***&sslmode=require"
        );
        assert_eq!(redact_url("postgres://h/db?sslpassword=X&user=a@b"), "postgres://h/db?sslpassword=***&user=a@b");
        assert_eq!(redact_url("redis://h:1/0?Password=X"), "redis://h:1/0?Password=***");
        assert_eq!(redact_url("rediss://h:1?password=X,rediss://h:2"), "rediss://h:1?password=***,rediss://h:2");
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
