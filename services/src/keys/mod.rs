//! API keys: their secrets, their lifecycle (create, list, revoke) and their quotas.

pub mod api_keys;
pub mod authenticator;
pub mod fallback_limiter;
pub mod quota;
pub mod quota_manager;
mod quota_outage;
pub mod secret;
pub mod secret_handoff;

pub use api_keys::{ApiKey, ApiKeyId, KeyName, PreviousSecret, RollOverlap};
pub use authenticator::{AuthenticatedKey, KeyAuthenticator, KeyCheck};
pub use quota::{Quota, QuotaLimit, QuotaMaximum};
pub use quota_manager::{FailMode, FailurePolicy, QuotaDecision, QuotaManager, Verdict, Window, WindowUse};
pub use secret::ApiKeySecret;
