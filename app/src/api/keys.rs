use leptos::prelude::*;

use super::{CreatedKey, KeyView};
use crate::error::AppError;

#[server(prefix = "/rpc", endpoint = "keys/list")]
pub async fn list_keys() -> Result<Vec<KeyView>, AppError> {
    use super::session;
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    let keys = services::keys::api_keys::list_for_owner(&services.db, user.id).await?;
    Ok(ssr::with_current_use(&services, keys).await)
}

#[cfg(feature = "ssr")]
mod ssr {
    use std::time::Duration;

    use services::keys::ApiKey;
    use services::Services;

    use super::super::{CurrentUse, KeyView};

    /// How long the list waits for Redis before showing quotas without use.
    const USE_TIMEOUT: Duration = Duration::from_millis(500);

    /// Views of the keys with each active key's use of the current hour and day. Redis failing
    /// for one key leaves that key without use; Redis not answering in time leaves the rest
    /// without use too, so a stalled Redis costs the page one timeout, not one per key.
    pub async fn with_current_use(services: &Services, keys: Vec<ApiKey>) -> Vec<KeyView> {
        let mut views = Vec::with_capacity(keys.len());
        let mut redis_answers = true;
        for key in keys {
            let current_use = if redis_answers && key.revoked_at.is_none() {
                match tokio::time::timeout(USE_TIMEOUT, services.quota.snapshot(key.id, &key.quota)).await {
                    Ok(Ok((hour, day, _))) => Some(CurrentUse { hour: hour.used, day: day.used }),
                    Ok(Err(err)) => {
                        tracing::warn!(key_id = %key.id, error = %err, "key list: no current use from Redis");
                        None
                    }
                    Err(_) => {
                        tracing::warn!("key list: Redis did not answer in time; quotas shown without use");
                        redis_answers = false;
                        None
                    }
                }
            } else {
                None
            };
            views.push(KeyView { current_use, ..KeyView::from(key) });
        }
        views
    }
}

#[server(prefix = "/rpc", endpoint = "keys/get")]
pub async fn get_key(id: String) -> Result<KeyView, AppError> {
    use super::session;
    use services::keys::{api_keys, ApiKeyId};
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    let key = api_keys::get_for(&services.db, ApiKeyId::parse(&id)?, &user).await?;
    Ok(key.into())
}

#[server(prefix = "/rpc", endpoint = "keys/create")]
pub async fn create_key(name: String) -> Result<CreatedKey, AppError> {
    use super::session;
    use services::keys::{api_keys, KeyName};
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    let name = KeyName::parse(&name)?;
    let (key, secret) = api_keys::create(&services.db, user.id, &name).await?;
    tracing::info!(key_id = %key.id, prefix = %key.prefix, user_id = user.id, "API key created");
    let api_base = services.settings.public_url.trim_end_matches('/').to_owned();
    Ok(CreatedKey { key: key.into(), secret: secret.expose().to_owned(), api_base })
}

/// Chooses which quota alerts (50, 80, 100 % of the hour or day quota) email the key's owner;
/// a checked box sends `on`. In-app notifications always appear.
#[server(prefix = "/rpc", endpoint = "keys/alert-emails")]
pub async fn set_alert_emails(
    id: String,
    email_50: Option<String>,
    email_80: Option<String>,
    email_100: Option<String>,
) -> Result<KeyView, AppError> {
    use super::session;
    use services::alerts::{self, AlertThresholds};
    use services::keys::{api_keys, ApiKeyId};
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    let id = ApiKeyId::parse(&id)?;
    api_keys::get_for(&services.db, id, &user).await?;
    let list: Vec<&str> = [("50", &email_50), ("80", &email_80), ("100", &email_100)]
        .into_iter()
        .filter(|(_, v)| v.as_deref().is_some_and(|v| !v.is_empty() && v != "off"))
        .map(|(t, _)| t)
        .collect();
    let thresholds = AlertThresholds::parse(&list.join(","))?;
    let mut conn = services::db::conn(&services.db).await?;
    alerts::set_email_thresholds(&mut conn, id, thresholds).await?;
    drop(conn);
    Ok(api_keys::get_for(&services.db, id, &user).await?.into())
}

#[server(prefix = "/rpc", endpoint = "keys/revoke")]
pub async fn revoke_key(id: String) -> Result<KeyView, AppError> {
    use super::session;
    use services::keys::{api_keys, ApiKeyId};
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    let key = api_keys::revoke_for(&services.db, ApiKeyId::parse(&id)?, &user).await?;
    // Other instances forget the key within the authenticator's cache lifetime (seconds).
    services.keys.invalidate_all();
    tracing::info!(key_id = %key.id, user_id = user.id, "API key revoked");
    Ok(key.into())
}
