use leptos::prelude::*;

use serde::{Deserialize, Serialize};

use super::KeyView;
use crate::error::AppError;

/// Keys on a page of `/admin`.
pub const ADMIN_KEYS_PER_PAGE: usize = 100;

/// A page of every merchant's keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminKeysPage {
    pub keys: Vec<KeyView>,
    /// There is a next page.
    pub more: bool,
}

/// Every key of every merchant a page at a time (`page` from 1), only those whose owner's
/// email, name or prefix contains `q` when it is given; for admins only.
#[server(prefix = "/rpc", endpoint = "admin/keys/search")]
pub async fn admin_search_keys(
    #[server(default)] q: String,
    #[server(default)] page: u32,
) -> Result<AdminKeysPage, AppError> {
    use super::session;
    let services = session::services()?;
    let admin = session::require_admin(&services).await?;
    let offset = i64::from(page.max(1) - 1) * ADMIN_KEYS_PER_PAGE as i64;
    // One more than a page tells whether there is a next one.
    let mut keys =
        services::keys::api_keys::search_all(&services.db, &q, offset, ADMIN_KEYS_PER_PAGE as i64 + 1).await?;
    let more = keys.len() > ADMIN_KEYS_PER_PAGE;
    keys.truncate(ADMIN_KEYS_PER_PAGE);
    Ok(AdminKeysPage { keys: keys.into_iter().map(|key| KeyView::seen_by(key, admin.id)).collect(), more })
}
