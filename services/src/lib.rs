//! keymeter's domain: accounts and sessions, API keys and their quotas.
//!
//! Plain Rust over PostgreSQL (diesel-async) and Redis (deadpool-redis); nothing here knows about
//! HTTP. The web server and the Leptos server functions both call into this crate.

use std::sync::Arc;

pub mod accounts;
pub mod alerts;
pub mod db;
pub mod error;
pub mod housekeeping;
pub mod keys;
pub mod mailer;
pub mod metrics;
pub mod monthly_report;
pub mod notifications;
pub mod outage_log;
pub mod postgres_tls;
pub mod public_url;
pub mod quota_changes;
pub mod quota_requests;
pub mod redis_pool;
pub mod schema;
pub mod text;
pub mod usage;

pub use error::{ServiceError, ServiceResult};

/// Handles to the shared backing services and the domain's long-lived parts, handed to every
/// request. One `Arc` inside: axum clones it per request, and cloning each part's handles
/// would cost a dozen contended reference counts every time.
#[derive(Clone)]
pub struct Services(Arc<ServiceParts>);

impl std::ops::Deref for Services {
    type Target = ServiceParts;

    fn deref(&self) -> &ServiceParts {
        &self.0
    }
}

/// What [`Services`] holds.
pub struct ServiceParts {
    pub db: db::DbPool,
    pub redis: redis_pool::RedisPool,
    /// One multiplexed Redis connection for everything a metered request waits on; health
    /// probes ask through it too ([`redis_pool::reach`]).
    pub hot_path: redis_pool::SharedConnection,
    /// Resolves API key secrets (cached briefly per instance).
    pub keys: keys::KeyAuthenticator,
    /// Checks and counts requests against quotas in Redis.
    pub quota: keys::QuotaManager,
    /// Takes usage events off the request path towards Redis and PostgreSQL.
    pub usage: usage::UsageRecorder,
    /// Quota alert crossings this instance has already put on a usage event.
    pub alert_crossings: alerts::CrossingMemo,
    /// The share of the database pool that CSV exports may hold.
    pub exports: usage::export::ExportSlots,
    /// What this instance has done, for monitoring.
    pub metrics: Arc<metrics::Metrics>,
    /// Prefix of the deployment-wide Redis keys (per-key data is keyed by key id).
    pub namespace: String,
    pub settings: Settings,
}

/// Deployment settings the domain needs.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Where people reach the app, for links in emails.
    pub public_url: public_url::PublicUrl,
    /// The highest limits a merchant may ask for.
    pub quota_maximum: keys::quota::QuotaMaximum,
    /// Where email goes (an SMTP host or a mail folder), for the admins' mail page.
    pub mail_delivery: String,
    /// What metered requests get while Redis is down or slow.
    pub quota_failure: keys::FailurePolicy,
    /// Reverse proxies whose `X-Forwarded-For` names the client (for the sign-in throttle).
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Services {
    /// Must be called inside a Tokio runtime: it starts the usage recorder's flusher.
    pub fn new(db: db::DbPool, redis: redis_pool::RedisPool, namespace: &str, settings: Settings) -> Self {
        let metrics = Arc::new(metrics::Metrics::default());
        // Used by the recorder only when Redis cannot take a batch.
        let fallback = usage::writer::UsageWriter::from_parts(
            db.clone(),
            redis.clone(),
            namespace,
            &settings.public_url,
            metrics.clone(),
        );
        let hot_path = redis_pool::SharedConnection::new(redis.clone());
        Self(Arc::new(ServiceParts {
            keys: keys::KeyAuthenticator::new(db.clone()),
            quota: keys::QuotaManager::with_connection(hot_path.clone(), settings.quota_failure),
            usage: usage::UsageRecorder::start(hot_path.clone(), namespace, Some(fallback), metrics.clone()),
            hot_path,
            metrics,
            alert_crossings: alerts::CrossingMemo::default(),
            exports: usage::export::ExportSlots::for_pool(db.status().max_size),
            namespace: namespace.to_owned(),
            settings,
            db,
            redis,
        }))
    }
}
