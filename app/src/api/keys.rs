use leptos::prelude::*;

use super::{CreatedKey, KeyView, KeysPage, LinkToken};
use crate::error::AppError;

/// Keys on a page of the merchant's key list.
pub const KEYS_PER_PAGE: usize = 50;

/// The signed-in user's keys a page at a time (`page` from 1): active ones first, newest first.
#[server(prefix = "/rpc", endpoint = "keys/list")]
pub async fn list_keys(#[server(default)] page: u32) -> Result<KeysPage, AppError> {
    use super::session;
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    let (offset, fetch) = super::page_window(page, KEYS_PER_PAGE);
    let keys = services::keys::api_keys::page_for_owner(&services.db, user.id, offset, fetch).await?;
    let (keys, more) = super::one_page(keys, KEYS_PER_PAGE);
    Ok(KeysPage { keys: ssr::with_current_use(&services, keys, &user).await, more })
}

#[cfg(feature = "ssr")]
mod ssr {
    use std::time::Duration;

    use services::accounts::User;
    use services::keys::ApiKey;
    use services::outage_log::LogEvery;
    use services::Services;

    use super::super::{CurrentUse, KeyView};

    /// How long the list waits for Redis before showing quotas without use.
    const USE_TIMEOUT: Duration = Duration::from_millis(500);

    /// Every view of a key list during a Redis outage would log a line per key: once in a while.
    static NO_USE_LOG: LogEvery = LogEvery::new();

    /// Views of the keys with each active key's use of the current hour and day, read for all
    /// keys at once (one after another, a long list cost one Redis round trip per key). Redis
    /// failing for one key leaves that key without use; Redis not answering in time leaves them
    /// all without use, so a stalled Redis costs the page one timeout.
    pub async fn with_current_use(services: &Services, keys: Vec<ApiKey>, viewer: &User) -> Vec<KeyView> {
        let reads = keys.iter().map(|key| async move {
            if key.revoked_at.is_some() {
                return None;
            }
            match services.quota.snapshot(key.id, &key.quota, key.quota_version_ms).await {
                Ok((hour, day, _)) => Some(CurrentUse { hour: hour.used, day: day.used }),
                Err(err) => {
                    services::warn_every!(NO_USE_LOG, key_id = %key.id, error = %err, "key list: no current use from Redis");
                    None
                }
            }
        });
        let uses = match tokio::time::timeout(USE_TIMEOUT, futures_util::future::join_all(reads)).await {
            Ok(uses) => uses,
            Err(_) => {
                services::warn_every!(NO_USE_LOG, "key list: Redis did not answer in time; quotas shown without use");
                vec![None; keys.len()]
            }
        };
        keys.into_iter()
            .zip(uses)
            .map(|(key, current_use)| KeyView { current_use, ..KeyView::seen_by(key, viewer) })
            .collect()
    }
}

#[server(prefix = "/rpc", endpoint = "keys/get")]
pub async fn get_key(id: String) -> Result<KeyView, AppError> {
    use super::session;
    use services::keys::{api_keys, ApiKeyId};
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    let key = api_keys::get_for(&services.db, ApiKeyId::parse(&id)?, &user).await?;
    Ok(KeyView::seen_by(key, &user))
}

#[server(prefix = "/rpc", endpoint = "keys/create")]
pub async fn create_key(name: String) -> Result<CreatedKey, AppError> {
    use super::plain_form;
    use super::session;
    use services::keys::{api_keys, KeyName};
    let services = session::services()?;
    let plain_form = plain_form::is_plain_form_post();
    // A success leads to the new secret's page (`hand_over_secret`).
    plain_form::answer::<CreateKey, _>(None, CREATE_AT, &[("name", &name)], async {
        let user = session::require_user(&services).await?;
        let parsed = KeyName::parse(&name).map_err(|e| e.in_field("name"))?;
        let (key, secret) = api_keys::create(&services.db, user.id, &parsed).await?;
        tracing::info!(key_id = %key.id, prefix = %key.prefix, user_id = user.id, "API key created");
        let page = format!("/dashboard/developers/api-keys?{}=", plain_form::CREATED);
        let lost = format!(
            "The key \u{201c}{}\u{201d} was created, but its secret could not be kept for this page. Revoke it and create another.",
            key.name
        );
        hand_over_secret(&services, plain_form, &user, key, secret, (&page, CREATE_AT), lost).await
    })
    .await
}

/// A new secret's reply. A plain form post (no JavaScript) is redirected to `page` followed by
/// a one-time token (and `#at`, the section showing the secret), and the page it lands on takes the secret from a hand-off (see
/// `secret_handoff`): the browser never reads this reply, and a secret never goes in a URL.
#[cfg(feature = "ssr")]
async fn hand_over_secret(
    services: &services::Services,
    plain_form: bool,
    user: &services::accounts::User,
    key: services::keys::ApiKey,
    secret: services::keys::ApiKeySecret,
    (page, at): (&str, &str),
    lost: String,
) -> Result<CreatedKey, AppError> {
    let api_base = services.settings.public_url.to_string();
    if plain_form {
        let token =
            services::keys::secret_handoff::hold(&services.redis, user.id, key.id, &secret).await.map_err(|e| {
                tracing::warn!(key_id = %key.id, error = %e, "a new secret could not be held for its page");
                AppError::Conflict(lost)
            })?;
        leptos_axum::redirect(&format!("{page}{}#{at}", token.as_str()));
        return Ok(CreatedKey { key: KeyView::seen_by(key, user), secret: String::new(), api_base });
    }
    Ok(CreatedKey { key: KeyView::seen_by(key, user), secret: secret.expose().to_owned(), api_base })
}

/// Rolls one of the signed-in user's active keys: a new secret, shown once; the old one keeps
/// working for `old_secret_hours` (0 to 168), then is refused. The key keeps its quota, alerts
/// and usage history.
#[server(prefix = "/rpc", endpoint = "keys/roll")]
pub async fn roll_key(id: String, old_secret_hours: String) -> Result<CreatedKey, AppError> {
    use super::plain_form;
    use super::session;
    use services::keys::{api_keys, ApiKeyId, RollOverlap};
    let services = session::services()?;
    let plain_form = plain_form::is_plain_form_post();
    // A success leads to the new secret's page (`hand_over_secret`).
    plain_form::answer::<RollKey, _>(None, ROLL_AT, &[], async {
        let user = session::require_user(&services).await?;
        let id = ApiKeyId::parse(&id)?;
        let overlap = RollOverlap::parse(&old_secret_hours).map_err(|e| e.in_field("old_secret_hours"))?;
        let (key, secret) = api_keys::roll_for(&services, id, &user, overlap).await?;
        tracing::info!(key_id = %key.id, prefix = %key.prefix, user_id = user.id, overlap_hours = overlap.hours(), "API key rolled");
        let page = format!("/dashboard/developers/api-keys/{}?{}=", key.id, plain_form::ROLLED);
        let lost = format!(
            "\u{201c}{}\u{201d} was rolled, but its new secret could not be kept for this page. Roll it again.",
            key.name
        );
        hand_over_secret(&services, plain_form, &user, key, secret, (&page, ROLL_AT), lost).await
    })
    .await
}

/// Stops a rolled key's previous secret now (the owner's integrations use the new one);
/// `prefix` is the previous secret the owner was shown.
#[server(prefix = "/rpc", endpoint = "keys/end-overlap")]
pub async fn end_key_overlap(id: String, prefix: String) -> Result<KeyView, AppError> {
    use super::session;
    use services::keys::{api_keys, ApiKeyId};
    let services = session::services()?;
    super::plain_form::answer::<EndKeyOverlap, _>(Some(OVERLAP_ENDED), ROLL_AT, &[], async {
        let user = session::require_user(&services).await?;
        let key = api_keys::end_overlap_for(&services, ApiKeyId::parse(&id)?, &user, &prefix).await?;
        tracing::info!(key_id = %key.id, user_id = user.id, "API key's previous secret stopped");
        Ok(KeyView::seen_by(key, &user))
    })
    .await
}

/// The key page's confirmation, without JavaScript, that a previous secret was stopped.
pub const OVERLAP_ENDED: &str = "overlap_ended";

/// The sections (element ids) of the key pages' forms, where a plain form post's answer shows
/// (see `plain_form`): creating a key on the list; rolling, alerts, renaming and revoking on a
/// key's page.
pub const CREATE_AT: &str = "create-key";
pub const ROLL_AT: &str = "roll";
pub const ALERTS_AT: &str = "alert-emails";
pub const RENAME_AT: &str = "rename";
pub const REVOKE_AT: &str = "revoke-key";

/// The key created (or rolled) by a plain form post (no JavaScript), for the page that post
/// returns to, once; `None` when its token was used, has expired, or is someone else's.
#[server(prefix = "/rpc", endpoint = "keys/created")]
pub async fn take_created_key(token: LinkToken) -> Result<Option<CreatedKey>, AppError> {
    use super::session;
    use services::keys::{api_keys, secret_handoff};
    let services = session::services()?;
    let user = session::require_user(&services).await?;
    let Some(token) = secret_handoff::HandoffToken::parse(&token.0) else { return Ok(None) };
    let Some((key_id, secret)) = secret_handoff::take(&services.redis, user.id, &token).await? else {
        return Ok(None);
    };
    let key = api_keys::get_for(&services.db, key_id, &user).await?;
    let api_base = services.settings.public_url.to_string();
    Ok(Some(CreatedKey { key: KeyView::seen_by(key, &user), secret: secret.expose().to_owned(), api_base }))
}

/// The key page's confirmation of alert choices saved without JavaScript.
pub const ALERTS_SAVED: &str = "alerts_saved";

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
    super::plain_form::answer::<SetAlertEmails, _>(Some(ALERTS_SAVED), ALERTS_AT, &[], async {
        let user = session::require_user(&services).await?;
        let id = ApiKeyId::parse(&id)?;
        let mut chosen = Vec::new();
        for (threshold, field, value) in
            [(50, "email_50", &email_50), (80, "email_80", &email_80), (100, "email_100", &email_100)]
        {
            if super::checkbox(value.as_deref(), "An alert choice", field)? {
                chosen.push(threshold);
            }
        }
        alerts::set_email_thresholds_for(&services.db, id, &user, AlertThresholds::from_chosen(&chosen)?).await?;
        Ok(KeyView::seen_by(api_keys::get_for(&services.db, id, &user).await?, &user))
    })
    .await
}

/// The key page's confirmation of a rename posted without JavaScript.
pub const RENAMED: &str = "renamed";
/// `?done=` after a key was revoked without JavaScript.
pub const REVOKED: &str = "revoked";

/// Renames one of the signed-in user's active keys.
#[server(prefix = "/rpc", endpoint = "keys/rename")]
pub async fn rename_key(id: String, name: String) -> Result<KeyView, AppError> {
    use super::session;
    use services::keys::{api_keys, ApiKeyId, KeyName};
    let services = session::services()?;
    super::plain_form::answer::<RenameKey, _>(Some(RENAMED), RENAME_AT, &[("name", &name)], async {
        let user = session::require_user(&services).await?;
        let id = ApiKeyId::parse(&id)?;
        let name = KeyName::parse(&name).map_err(|e| e.in_field("name"))?;
        let key = api_keys::rename_for(&services.db, id, &user, &name).await?;
        tracing::info!(key_id = %key.id, user_id = user.id, "API key renamed");
        Ok(KeyView::seen_by(key, &user))
    })
    .await
}

#[server(prefix = "/rpc", endpoint = "keys/revoke")]
pub async fn revoke_key(id: String) -> Result<KeyView, AppError> {
    use super::session;
    use services::keys::{api_keys, ApiKeyId};
    let services = session::services()?;
    // Back to the list or the key's page, whichever it was posted from (without a created or
    // rolled key's one-time token, which only says "used" when read twice).
    let (key, user) = super::plain_form::answer::<RevokeKey, _>(Some(REVOKED), REVOKE_AT, &[], async {
        let user = session::require_user(&services).await?;
        Ok((api_keys::revoke_for(&services, ApiKeyId::parse(&id)?, &user).await?, user))
    })
    .await?;
    tracing::info!(key_id = %key.id, user_id = user.id, "API key revoked");
    Ok(KeyView::seen_by(key, &user))
}
