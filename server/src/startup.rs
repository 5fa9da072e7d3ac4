//! Wiring: connects the backing services, assembles the axum app (API, health, Leptos pages and
//! server functions, static assets) and runs it until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use app::api::session::CookieSettings;
use axum::extract::FromRef;
use axum::http::{header, HeaderValue};
use axum::Router;
use leptos::prelude::*;
use leptos_axum::{generate_route_list, AxumRouteListing, LeptosRoutes};
use services::housekeeping::Housekeeping;
use services::mailer::Mailer;
use services::usage::writer::UsageWriter;
use services::Services;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::config::{redact_url, Config};
use crate::http_server::{self, ConnectionLimits, Connections};
use crate::{middleware, routes};

/// State of the axum router: the domain services and Leptos' options.
#[derive(Clone)]
pub struct AppState {
    pub services: Services,
    pub leptos_options: LeptosOptions,
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(state: &AppState) -> Self {
        state.leptos_options.clone()
    }
}

impl FromRef<AppState> for Services {
    fn from_ref(state: &AppState) -> Self {
        state.services.clone()
    }
}

/// PostgreSQL only, for the commands that need nothing else (accounts, keys): reachable and
/// migrated, or an error that says which.
pub async fn connect_database(config: &Config) -> anyhow::Result<services::db::DbPool> {
    let db = services::db::pool(&config.database_url, config.db_pool_size)?;
    services::db::ping(&db)
        .await
        .with_context(|| format!("PostgreSQL at {} is unreachable", redact_url(&config.database_url)))?;
    let pending = services::db::pending_migrations(&db)
        .await
        .with_context(|| format!("reading the migrations of the database at {}", redact_url(&config.database_url)))?;
    if !pending.is_empty() {
        anyhow::bail!(
            "the database at {} has {} pending migration{}: run `keymeter migrate`",
            redact_url(&config.database_url),
            pending.len(),
            if pending.len() == 1 { "" } else { "s" }
        );
    }
    Ok(db)
}

/// How long Redis gets to answer at startup (a hung primary of a cluster counts as not answering).
const REDIS_STARTUP_PROBE: Duration = Duration::from_secs(5);

/// Redis only, for the commands that need nothing else: reachable, or an error that says so.
pub async fn connect_redis(config: &Config) -> anyhow::Result<services::redis_pool::RedisPool> {
    let redis = services::redis_pool::pool_with(&config.redis_url, config.redis_pool_size, config.redis_cluster)
        .map_err(|e| match e {
            // The pool names REDIS_URL itself; this is the operator's setting, not an internal error.
            services::ServiceError::Internal(message) => {
                anyhow::anyhow!("{message} ({})", redact_url(&config.redis_url))
            }
            other => other.into(),
        })?;
    let reach =
        services::redis_pool::reach(&services::redis_pool::SharedConnection::new(redis.clone()), REDIS_STARTUP_PROBE)
            .await
            .with_context(|| format!("Redis at {} is unreachable", redact_url(&config.redis_url)))?;
    // An instance started meanwhile (a deploy, a scale-out) serves the other slots' keys.
    if reach == services::redis_pool::Reach::Part {
        tracing::warn!(
            "a part of the Redis Cluster does not answer: keys in its slots fall back until it does (starting anyway)"
        );
    }
    Ok(redis)
}

/// Opens the pools and proves both services answer, naming the one that does not, and that the
/// database has every migration this binary knows (without them every request would fail).
pub async fn connect(config: &Config) -> anyhow::Result<Services> {
    let db = connect_database(config).await?;
    let redis = connect_redis(config).await?;
    let settings = services::Settings {
        public_url: config.public_url.clone(),
        quota_maximum: config.quota_maximum,
        mail_delivery: match &config.smtp_url {
            Some(url) => format!("SMTP at {}", redact_url(url)),
            None => format!("the mail folder {}", config.mail_dir.display()),
        },
        quota_failure: config.quota_failure,
        trusted_proxies: config.trusted_proxies.clone(),
    };
    let services = Services::new(db, redis, &config.redis_namespace, settings);
    Ok(services)
}

pub fn leptos_options(config: &Config) -> LeptosOptions {
    LeptosOptions::builder()
        .output_name("keymeter")
        .site_root(config.site_root.to_string_lossy().into_owned())
        .site_pkg_dir("pkg")
        .site_addr(config.listen)
        .build()
}

/// The pages' routes, walked from the app once per process.
///
/// Walking the app sets a process-wide Leptos flag that parks every resource first polled
/// meanwhile, forever (leptos-rs/leptos#4773): a page rendered by another app in the same process
/// (tests run many) would never answer. Once per process, no page can render during the walk.
fn page_routes() -> Vec<AxumRouteListing> {
    static ROUTES: OnceLock<Vec<AxumRouteListing>> = OnceLock::new();
    ROUTES.get_or_init(|| generate_route_list(app::App)).clone()
}

/// The whole HTTP app.
pub fn router(config: &Config, services: Services) -> Router {
    let state = AppState { services: services.clone(), leptos_options: leptos_options(config) };
    let cookies = CookieSettings { secure: config.secure_cookies };
    let context = {
        let services = services.clone();
        move || {
            provide_context(services.clone());
            provide_context(cookies);
        }
    };
    let routes = page_routes();
    let options = state.leptos_options.clone();
    let shell = move || app::shell(options.clone());

    // The bundle is rebuilt under the same names, so browsers revalidate; gzip copies are
    // served when present.
    let pkg = Router::new()
        .fallback_service(ServeDir::new(config.site_root.join("pkg")).precompressed_gzip())
        .layer(SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, HeaderValue::from_static("no-cache")));

    let access_log = || axum::middleware::from_fn(middleware::access_log::log_request);
    // The metered API and the health probes are not in the access log (see its module).
    let api_v1 = routes::api_v1::router(services.clone());
    let mut api = Router::new()
        .nest("/api/v1", api_v1.clone())
        // `nest` leaves out the bare `/api/v1/`: it gets the API's JSON answers too, not a page.
        .route_service("/api/v1/", api_v1.with_state(services.clone()))
        .merge(routes::health::router())
        .merge(Router::new().merge(routes::unsubscribe::router()).merge(routes::usage::router()).layer(access_log()));
    if config.bench_routes {
        api = api.merge(routes::bench::router());
    }
    let pages = Router::new()
        .leptos_routes_with_context(&state, routes, context.clone(), shell)
        .fallback(leptos_axum::file_and_error_handler_with_context::<AppState, _>(context, app::shell))
        .layer(axum::middleware::from_fn_with_state(
            routes::page_deadline::PAGE_DEADLINE,
            routes::page_deadline::within_deadline,
        ))
        // Signed-out visits to signed-in pages: a real redirect before rendering.
        .layer(axum::middleware::from_fn_with_state(services.clone(), routes::page_guard::require_session))
        .layer(axum::middleware::from_fn_with_state(services.clone(), routes::same_origin::require_same_origin))
        // Pages and server functions answer with one account's data (a new key's secret, once):
        // nothing of them is kept in a cache.
        .layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .layer(access_log())
        .with_state(state);
    let app = api.with_state(services).nest("/pkg", pkg).merge(pages);
    // No page may be framed by another site (clickjacking), nothing is sniffed into another
    // type, and no URL of this app leaves in a Referer to another site.
    let header = |name, value| SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value));
    app.layer(header(header::X_FRAME_OPTIONS, "DENY"))
        .layer(header(header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'; object-src 'none'; base-uri 'self'"))
        .layer(header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header(header::REFERRER_POLICY, "same-origin"))
}

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    router: Router,
    services: Services,
    /// The usage writer's own pools: it runs on a runtime of its own (see [`Self::run_until`]),
    /// and a pooled connection belongs to the runtime that opened it.
    writer_pools: (services::db::DbPool, services::redis_pool::RedisPool),
    retention_days: u32,
    connections: Connections,
    /// Where `/metrics` is served, if anywhere (`KEYMETER_METRICS_LISTEN`).
    metrics_listener: Option<TcpListener>,
    demo_secret: Option<String>,
    mailer: Option<Mailer>,
}

impl Application {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let bundle = config.site_root.join("pkg").join("keymeter.js");
        if !bundle.is_file() {
            // Not refused: the metered API needs no bundle. But every page would load without
            // its script and styles, and a relative default read from another directory says
            // nothing otherwise.
            tracing::warn!(
                site_root = %config.site_root.display(),
                "KEYMETER_SITE_ROOT holds no browser bundle (pkg/keymeter.js): pages will not work; \
                 run `make build` and point KEYMETER_SITE_ROOT at its target/site"
            );
        }
        let services = connect(config).await?;
        Self::with_services(config, services).await
    }

    pub async fn with_services(config: &Config, services: Services) -> anyhow::Result<Self> {
        let listener =
            http_server::bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
        let metrics_listener = config
            .metrics_listen
            .map(|at| http_server::bind(at).with_context(|| format!("cannot listen on {at} (KEYMETER_METRICS_LISTEN)")))
            .transpose()?;
        Ok(Self {
            listener,
            metrics_listener,
            router: router(config, services.clone()),
            services,
            writer_pools: (
                services::db::pool(&config.database_url, 2)?,
                services::redis_pool::pool_with(&config.redis_url, 2, config.redis_cluster)?,
            ),
            retention_days: config.usage_retention_days,
            // Descriptors kept for everything but clients: the pools (the writer's two of each
            // included), the listener, mail, logs, the runtime's own, and the metrics listener's.
            connections: Connections::new(config.connection_limits.fitting_file_limit(
                config.db_pool_size
                    + config.redis_pool_size
                    + 4
                    + 64
                    + config.metrics_listen.map_or(0, |_| METRICS_CONNECTIONS + 1),
            )),
            mailer: Some(Mailer::with_smtp_ca(
                config.smtp_url.as_deref(),
                config.smtp_ca_file.as_deref(),
                config.mail_dir.clone(),
                &config.mail_from,
            )?),
            demo_secret: config.demo_traffic_key_file.as_ref().and_then(|path| match std::fs::read_to_string(path) {
                Ok(secret) => Some(secret.trim().to_owned()),
                Err(e) => {
                    // Demo traffic is a nicety: the server starts without it, but says why.
                    tracing::warn!(path = %path.display(), error = %e, "demo traffic off: its key file cannot be read");
                    None
                }
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until Ctrl-C or SIGTERM, then flushes all usage (see [`Self::run_until`]). A
    /// second signal ends the process at once: with Redis and PostgreSQL both unreachable the
    /// flush would wait until one of them returns. Signals within a second of the first are the
    /// same stop delivered twice, not a second one: `timeout` signals the process and its
    /// group, and Ctrl-C in a terminal reaches every process of the group.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let shutdown = async {
            shutdown_signal().await;
            let first = tokio::time::Instant::now();
            tracing::info!("shutting down: flushing usage (a second signal stops at once)");
            tokio::spawn(async move {
                loop {
                    shutdown_signal().await;
                    if first.elapsed() >= Duration::from_secs(1) {
                        break;
                    }
                }
                tracing::error!("second stop signal: exiting without waiting for the usage still queued");
                std::process::exit(1);
            });
        };
        self.run_until(shutdown).await
    }

    /// Serves until `shutdown` completes, then flushes all usage: queued events to Redis, and
    /// what this instance can still move from Redis to PostgreSQL.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop, stopped) = watch::channel(false);
        let services = &self.services;
        let (db, redis) = self.writer_pools;
        let housekeeping = Housekeeping::new(db.clone(), self.retention_days);
        let writer = UsageWriter::from_parts(
            db,
            redis,
            &services.namespace,
            &services.settings.public_url,
            services.metrics.clone(),
        );
        // Its bursts (decoding a round of the stream, building the insert) kept metered requests
        // waiting when they ran on the request workers: the tracker's p99 halved when it moved.
        // Housekeeping runs beside it there (deleting old minute rollups takes a while), on its
        // pools, until the writer has drained the stream.
        let upkeep = {
            let stopped = stopped.clone();
            async move {
                let housekeeping = tokio::spawn(housekeeping.run(stopped.clone()));
                writer.run(stopped).await;
                housekeeping.abort();
            }
        };
        let writer = run_on_own_thread("usage-writer", upkeep)?;
        let mailer = self.mailer.map(|mailer| {
            tracing::info!(transport = %mailer.describe(), "mail");
            tokio::spawn(mailer.run(services.db.clone(), stopped.clone()))
        });
        // Alerts that counts added after a Redis outage reach (no request carries them).
        let added_counts = services
            .quota
            .take_added_counts()
            .map(|added| tokio::spawn(services::alerts::tell_added_counts(services.clone(), added, stopped.clone())));
        let reports = tokio::spawn(services::monthly_report::run_scheduler(services.clone(), stopped));
        // Open live streams end when shutdown begins, or the graceful stop would wait for every
        // dashboard to be closed before flushing usage. The demo traffic stops then too.
        let (closing, closing_seen) = watch::channel(false);
        let demo = self
            .demo_secret
            .clone()
            .map(|secret| crate::demo_traffic::spawn(self.router.clone(), secret, closing_seen.clone()));
        // Scrapes are few: a handful of connections, the app's timeout. It is served until the
        // usage is flushed: the backlog and the last counts matter most during a stop.
        let (metrics_stop, metrics_stopped) = oneshot::channel::<()>();
        let metrics = self.metrics_listener.map(|listener| {
            let router = routes::metrics::router(services.clone(), self.connections.clone());
            let limits = ConnectionLimits { max_connections: Some(METRICS_CONNECTIONS), ..self.connections.limits() };
            let stop = async move {
                let _ = metrics_stopped.await;
            };
            tokio::spawn(http_server::serve(listener, router, Connections::new(limits), stop))
        });
        let shutdown = async move {
            shutdown.await;
            let _ = closing.send(true);
        };
        let app = self.router.layer(axum::Extension(Closing(closing_seen)));
        http_server::serve(self.listener, app, self.connections, shutdown).await;
        // Its last request (at most a few hundred ms) is recorded before the recorder closes.
        if let Some(demo) = demo {
            if tokio::time::timeout(Duration::from_secs(15), demo).await.is_err() {
                tracing::warn!("demo traffic did not stop within 15 s");
            }
        }
        // Side by side: the usage flush can wait long for a store that is down.
        tokio::join!(self.services.usage.shutdown(), self.services.quota.add_owed_at_stop());
        let _ = stop.send(true);
        if let Some(mailer) = mailer {
            let _ = mailer.await;
        }
        let _ = reports.await;
        // Bounded: with PostgreSQL down each queued alert would wait for a connection, and the
        // usage writer's drain comes after this.
        if let Some(mut added_counts) = added_counts {
            if tokio::time::timeout(Duration::from_secs(10), &mut added_counts).await.is_err() {
                added_counts.abort();
                tracing::warn!("quota alerts reached after a Redis outage were not all stored within 10 s");
            }
        }
        if tokio::time::timeout(Duration::from_secs(30), writer).await.is_err() {
            tracing::warn!("usage writer did not drain within 30 s; the rest stays in Redis for the next writer");
        }
        drop(metrics_stop);
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        Ok(())
    }
}

/// Connections the metrics listener serves at once.
const METRICS_CONNECTIONS: usize = 16;

/// Becomes true when the server starts to shut down; long-lived responses end then.
#[derive(Clone)]
pub struct Closing(watch::Receiver<bool>);

impl Closing {
    pub async fn wait(mut self) {
        // An error means the server is gone: closing as well.
        let _ = self.0.wait_for(|&closing| closing).await;
    }
}

/// Runs `task` on a thread of its own with a single-threaded Tokio runtime; the receiver
/// resolves when the task has ended.
fn run_on_own_thread(
    name: &str,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<oneshot::Receiver<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (ended, done) = oneshot::channel();
    std::thread::Builder::new().name(name.to_owned()).spawn(move || {
        runtime.block_on(task);
        let _ = ended.send(());
    })?;
    Ok(done)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
