//! API keys: their secrets, their lifecycle (create, list, revoke) and their quotas.

pub mod api_keys;
pub mod quota;
pub mod secret;

pub use api_keys::{ApiKey, ApiKeyId, KeyName, KeyStatus};
pub use quota::{Quota, QuotaLimit};
pub use secret::ApiKeySecret;
