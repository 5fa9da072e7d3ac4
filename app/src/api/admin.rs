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
    Ok(KeysPage { keys: keys.into_iter().map(|key| KeyView::seen_by(key, &admin)).collect(), more })
}

/// Accounts on a page of `/admin/accounts`.
pub const ADMIN_ACCOUNTS_PER_PAGE: usize = 100;

/// An account as the admins' list shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccountView {
    pub email: String,
    pub is_admin: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub disabled_at: Option<chrono::DateTime<chrono::Utc>>,
    pub active_keys: i64,
    /// The admin looking: offered no switch (an admin cannot shut themselves out).
    pub you: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccountsPage {
    pub accounts: Vec<AccountView>,
    pub more: bool,
}

/// Every account a page at a time (`page` from 1), by address, only those whose address
/// contains `q` when it is given; for admins only.
#[server(prefix = "/rpc", endpoint = "admin/accounts/search")]
pub async fn admin_search_accounts(
    #[server(default)] q: String,
    #[server(default)] page: u32,
) -> Result<AccountsPage, AppError> {
    use super::session;
    let services = session::services()?;
    let admin = session::require_admin(&services).await?;
    let (offset, fetch) = super::page_window(page, ADMIN_ACCOUNTS_PER_PAGE);
    let found = services::accounts::search_accounts(&services.db, &q, offset, fetch).await?;
    let (found, more) = super::one_page(found, ADMIN_ACCOUNTS_PER_PAGE);
    let accounts = found
        .into_iter()
        .map(|a| AccountView {
            you: a.user.id == admin.id,
            is_admin: a.user.is_admin(),
            email: a.user.email,
            created_at: a.user.created_at,
            disabled_at: a.disabled_at,
            active_keys: a.active_keys,
        })
        .collect();
    Ok(AccountsPage { accounts, more })
}

/// What an admin's switch of an account did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccountSwitched {
    pub email: String,
    pub disabled: bool,
    /// False when the account already was as asked.
    pub changed: bool,
    pub sessions_ended: usize,
}

impl AccountSwitched {
    /// The sentence the page shows.
    pub fn message(&self) -> String {
        let email = &self.email;
        match (self.changed, self.disabled) {
            (true, true) => format!(
                "Disabled {email}: signed out of {}. Its API keys keep working.",
                format::counted(i64::try_from(self.sessions_ended).unwrap_or(i64::MAX), "session", "sessions")
            ),
            (true, false) => format!("Enabled {email}: it can sign in again."),
            (false, true) => format!("{email} was already disabled."),
            (false, false) => format!("{email} was not disabled."),
        }
    }
}

/// Disables (`disable` is "on") or enables the account with this address, as `keymeter user
/// disable` / `enable` do: a disabled account cannot sign in, its sessions end, its keys keep
/// working. An admin cannot disable their own account, nor the last admin.
#[server(prefix = "/rpc", endpoint = "admin/accounts/switch")]
pub async fn admin_switch_account(
    email: String,
    #[server(default)] disable: Option<String>,
) -> Result<AccountSwitched, AppError> {
    use super::session;
    let services = session::services()?;
    let admin = session::require_admin(&services).await?;
    let disable = super::checkbox(disable.as_deref(), "Disable", "disable")?;
    let email = services::accounts::Email::parse(&email)?;
    let done = services::accounts::set_disabled_by(&services.db, &admin, &email, disable).await?;
    tracing::info!(
        admin_id = admin.id,
        user_id = done.user.id,
        disabled = disable,
        changed = done.changed,
        sessions_ended = done.sessions_ended,
        "account switched by an admin"
    );
    Ok(AccountSwitched {
        email: done.user.email,
        disabled: disable,
        changed: done.changed,
        sessions_ended: done.sessions_ended,
    })
}
