use leptos::prelude::*;

use super::KeysPage;
use crate::error::AppError;

/// Keys on a page of `/admin`.
pub const ADMIN_KEYS_PER_PAGE: usize = 100;

/// Every key of every merchant a page at a time (`page` from 1), only those whose owner's
/// email, name or prefix contains `q` when it is given; for admins only.
#[server(prefix = "/rpc", endpoint = "admin/keys/search")]
pub async fn admin_search_keys(
    #[server(default)] q: String,
    #[server(default)] page: u32,
) -> Result<KeysPage, AppError> {
    use super::{session, KeyView};
    let services = session::services()?;
    let admin = session::require_admin(&services).await?;
    let (offset, fetch) = super::page_window(page, ADMIN_KEYS_PER_PAGE);
    let keys = services::keys::api_keys::search_all(&services.db, &q, offset, fetch).await?;
    let (keys, more) = super::one_page(keys, ADMIN_KEYS_PER_PAGE);
    Ok(KeysPage { keys: keys.into_iter().map(|key| KeyView::seen_by(key, admin.id)).collect(), more })
}
