//! Wiring: connects the backing services, assembles the axum app (API, health, Leptos pages and
//! server functions, static assets) and runs it until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use app::api::session::CookieSettings;
use axum::extract::FromRef;
use axum::http::{header, HeaderValue};
use axum::Router;
use leptos::prelude::*;
use leptos_axum::{generate_route_list, LeptosRoutes};
use services::Services;
use tokio::net::TcpListener;
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::config::{redact_url, Config};
use crate::routes;

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

/// Opens the pools and proves both services answer, naming the one that does not.
pub async fn connect(config: &Config) -> anyhow::Result<Services> {
    let db = services::db::pool(&config.database_url, config.db_pool_size)?;
    services::db::ping(&db).await.with_context(|| {
        format!(
            "PostgreSQL at {} is unreachable",
            redact_url(&config.database_url)
        )
    })?;
    let redis = services::redis_pool::pool(&config.redis_url, config.redis_pool_size)?;
    services::redis_pool::ping(&redis)
        .await
        .with_context(|| format!("Redis at {} is unreachable", redact_url(&config.redis_url)))?;
    Ok(Services::new(db, redis))
}

pub fn leptos_options(config: &Config) -> LeptosOptions {
    LeptosOptions::builder()
        .output_name("keymeter")
        .site_root(config.site_root.to_string_lossy().into_owned())
        .site_pkg_dir("pkg")
        .site_addr(config.listen)
        .build()
}

/// The whole HTTP app.
pub fn router(config: &Config, services: Services) -> Router {
    let state = AppState {
        services: services.clone(),
        leptos_options: leptos_options(config),
    };
    let cookies = CookieSettings {
        secure: config.secure_cookies,
    };
    let context = {
        let services = services.clone();
        move || {
            provide_context(services.clone());
            provide_context(cookies);
        }
    };
    let routes = generate_route_list(app::App);
    let options = state.leptos_options.clone();
    let shell = move || app::shell(options.clone());

    // The bundle is rebuilt under the same names, so browsers revalidate; gzip copies are
    // served when present.
    let pkg = Router::new()
        .fallback_service(ServeDir::new(config.site_root.join("pkg")).precompressed_gzip())
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        ));

    Router::new()
        .nest("/api/v1", routes::api_v1::router(services.clone()))
        .merge(routes::health::router())
        .with_state(services)
        .nest("/pkg", pkg)
        .merge(
            Router::new()
                .leptos_routes_with_context(&state, routes, context.clone(), shell)
                .fallback(leptos_axum::file_and_error_handler_with_context::<
                    AppState,
                    _,
                >(context, app::shell))
                .with_state(state),
        )
}

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    router: Router,
}

impl Application {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let services = connect(config).await?;
        Self::with_services(config, services).await
    }

    pub async fn with_services(config: &Config, services: Services) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        Ok(Self {
            listener,
            router: router(config, services),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let app = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
    }
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
    tracing::info!("shutting down");
    // Give in-flight requests a moment; axum waits for them to finish.
    tokio::time::sleep(Duration::from_millis(50)).await;
}
