//! Server functions (the dashboard's RPC surface, under `/rpc/…` with stable paths) and the
//! types they exchange with the browser. Every function checks the session on the server.

mod admin;
mod auth;
mod keys;
mod mail;
mod notifications;
pub mod plain_form;
pub mod quota_requests;
#[cfg(feature = "ssr")]
pub mod session;
pub mod usage;

pub use admin::*;
pub use auth::*;
pub use keys::*;
pub use mail::*;
pub use notifications::*;
pub use quota_requests::*;
pub use usage::*;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A checkbox as a browser sends it: `on` when checked, nothing when not (`off` is taken as
/// not); anything else is refused, naming `what` and the form field.
#[cfg(feature = "ssr")]
fn checkbox(value: Option<&str>, what: &str, field: &str) -> Result<bool, crate::error::AppError> {
    match value.map(str::trim) {
        None | Some("" | "off") => Ok(false),
        Some("on") => Ok(true),
        Some(other) => Err(crate::error::AppError::BadRequest {
            message: format!("{what} is \u{201c}on\u{201d} or \u{201c}off\u{201d}, not {other:?}."),
            field: Some(field.to_owned()),
        }),
    }
}

/// The signed-in account, as pages need it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentUser {
    pub email: String,
    pub is_admin: bool,
}

/// An API key as its owner (or an admin) sees it; never carries the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub owner_email: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub requests_per_hour: i64,
    pub requests_per_day: i64,
    pub burst_per_second: Option<i64>,
    /// Quota alert thresholds (percent) that email the owner.
    pub alert_emails: Vec<u8>,
    /// Admitted calls in the current hour and UTC day, from Redis. Only the key list fills it,
    /// and only while Redis answers; otherwise the list shows the quota alone.
    #[serde(default)]
    pub current_use: Option<CurrentUse>,
    /// Whether the viewer owns the key: an admin looking at a merchant's key gets no owner-only
    /// forms (asking for more quota, choosing which alerts email the owner).
    #[serde(default)]
    pub yours: bool,
    /// Whether the viewer is an admin: a key's page offers them the form that sets its quota.
    #[serde(default)]
    pub viewer_is_admin: bool,
    /// The last time its secret was replaced.
    #[serde(default)]
    pub rolled_at: Option<DateTime<Utc>>,
    /// The secret before the last roll, while the key remembers it.
    #[serde(default)]
    pub previous_secret: Option<PreviousSecretView>,
}

/// A rolled key's replaced secret: its visible prefix, when it stops (or stopped) working, and
/// whether it still works (as the server saw it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSecretView {
    pub prefix: String,
    pub expires_at: DateTime<Utc>,
    pub works: bool,
    /// When a call last came with it (to the minute); `None`: not since the roll.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A page of keys (the merchant's list, the admins' search).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeysPage {
    pub keys: Vec<KeyView>,
    /// There is a next page.
    pub more: bool,
}

/// Where page `page` (from 1; 0 is the first) of `per_page` starts, and how many rows to fetch:
/// one more than a page tells whether there is a next one (see [`one_page`]).
#[cfg(feature = "ssr")]
fn page_window(page: u32, per_page: usize) -> (i64, i64) {
    (i64::from(page.max(1) - 1) * per_page as i64, per_page as i64 + 1)
}

/// The rows fetched for a [`page_window`], cut to the page, and whether there are more.
#[cfg(feature = "ssr")]
fn one_page<T>(mut fetched: Vec<T>, per_page: usize) -> (Vec<T>, bool) {
    let more = fetched.len() > per_page;
    fetched.truncate(per_page);
    (fetched, more)
}

/// A key's use of its current quota windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentUse {
    pub hour: i64,
    pub day: i64,
}

impl KeyView {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    /// "active" or "revoked", as pages badge it.
    pub fn status(&self) -> &'static str {
        if self.is_revoked() {
            "revoked"
        } else {
            "active"
        }
    }
}

/// A key just created: the only moment its secret is ever shown. (`Debug` leaves the secret out.)
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedKey {
    pub key: KeyView,
    pub secret: String,
    /// Where the metered API is reached (`KEYMETER_PUBLIC_URL`), for the page's example call.
    pub api_base: String,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("key", &self.key)
            .field("secret", &"***")
            .field("api_base", &self.api_base)
            .finish()
    }
}

#[cfg(feature = "ssr")]
impl KeyView {
    /// `key` as `viewer` sees it (theirs or not; with an admin's forms or not).
    pub fn seen_by(key: services::keys::ApiKey, viewer: &services::accounts::User) -> Self {
        Self {
            yours: key.owner_id == viewer.id,
            viewer_is_admin: viewer.is_admin(),
            id: key.id.to_string(),
            name: key.name,
            prefix: key.prefix,
            owner_email: key.owner_email,
            created_at: key.created_at,
            last_used_at: key.last_used_at,
            revoked_at: key.revoked_at,
            requests_per_hour: key.quota.per_hour.get(),
            requests_per_day: key.quota.per_day.get(),
            burst_per_second: key.quota.burst_per_second.map(|b| b.get()),
            alert_emails: key.alert_email_thresholds.iter().collect(),
            current_use: None,
            rolled_at: key.rolled_at,
            previous_secret: key.previous_secret.map(|p| PreviousSecretView {
                works: p.works,
                prefix: p.prefix,
                expires_at: p.expires_at,
                last_used_at: p.last_used_at,
            }),
        }
    }
}
