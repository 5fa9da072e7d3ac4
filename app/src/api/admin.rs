use leptos::prelude::*;

use super::KeyView;
use crate::error::AppError;

/// Every key of every merchant, for admins only.
#[server(prefix = "/rpc", endpoint = "admin/keys")]
pub async fn admin_list_keys() -> Result<Vec<KeyView>, AppError> {
    use super::session;
    let services = session::services()?;
    let admin = session::require_admin(&services).await?;
    let keys = services::keys::api_keys::list_all(&services.db).await?;
    Ok(keys.into_iter().map(|key| KeyView::seen_by(key, admin.id)).collect())
}
