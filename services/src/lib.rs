//! keymeter's domain: accounts and sessions, API keys and their quotas.
//!
//! Plain Rust over PostgreSQL (diesel-async) and Redis (deadpool-redis); nothing here knows about
//! HTTP. The web server and the Leptos server functions both call into this crate.

pub mod accounts;
pub mod db;
pub mod error;
pub mod keys;
pub mod redis_pool;
pub mod schema;

pub use error::{ServiceError, ServiceResult};

/// Handles to the shared backing services, cheap to clone and handed to every request.
#[derive(Clone)]
pub struct Services {
    pub db: db::DbPool,
    pub redis: redis_pool::RedisPool,
}

impl Services {
    pub fn new(db: db::DbPool, redis: redis_pool::RedisPool) -> Self {
        Self { db, redis }
    }
}
