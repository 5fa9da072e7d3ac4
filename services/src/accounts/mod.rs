//! Accounts: merchants and admins, their passwords and their sessions.

pub mod email_preferences;
pub mod known_devices;
mod login_throttle;
mod password;
pub mod password_reset;
pub mod sessions;
pub(crate) mod token;

pub use login_throttle::{client_address, lift as lift_sign_in_lockout};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::db::{self, DbPool};
use crate::notifications;
use crate::public_url::PublicUrl;
use crate::schema::users;
use crate::{ServiceError, ServiceResult};

pub use password::Password;

/// The message for every failed sign-in, so that a caller cannot tell unknown addresses from
/// wrong passwords.
pub const BAD_CREDENTIALS: &str = "Invalid email or password.";

/// The answer to the right password of a disabled account (only the password's owner learns
/// that the account exists).
pub const ACCOUNT_DISABLED: &str = "This account is disabled. Ask your keymeter administrator.";

/// A lower-cased email address that the mailer can send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> ServiceResult<Self> {
        let email = raw.trim().to_lowercase();
        let invalid = || ServiceError::invalid("Enter a valid email address.");
        if email.len() < 3 || email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        // lettre's own parser: the mailer reads the address with it when it sends, so an
        // account it would refuse (quotes, angle brackets, …) could never get mail.
        email.parse::<lettre::Address>().map_err(|_| invalid())?;
        let (_, domain) = email.split_once('@').ok_or_else(invalid)?;
        if domain.starts_with('.') || domain.ends_with('.') {
            return Err(invalid());
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Refuses an address keymeter cannot mail, for a new account: mail to a non-ASCII address
    /// needs SMTPUTF8, which keymeter's mailer does not speak, so the account would never get its
    /// alerts. (Accounts made before this rule still sign in: only creation checks it.)
    pub fn check_mailable(&self) -> ServiceResult<()> {
        if self.0.is_ascii() {
            return Ok(());
        }
        Err(ServiceError::invalid(
            "keymeter mails only addresses in ASCII letters; for an international domain, use its xn-- form.",
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Merchant,
    Admin,
}

impl Role {
    pub fn parse(raw: &str) -> ServiceResult<Self> {
        match raw.trim() {
            "merchant" => Ok(Self::Merchant),
            "admin" => Ok(Self::Admin),
            other => Err(ServiceError::invalid(format!("unknown role {other:?}: expected merchant or admin"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Merchant => "merchant",
            Self::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = users)]
pub(crate) struct UserRow {
    id: i64,
    email: String,
    role: String,
    created_at: DateTime<Utc>,
}

impl UserRow {
    pub(crate) fn into_user(self) -> ServiceResult<User> {
        Ok(User { id: self.id, email: self.email, role: Role::parse(&self.role)?, created_at: self.created_at })
    }
}

/// Creates an account; a taken address is a [`ServiceError::Conflict`].
pub async fn create_user(db: &DbPool, email: &Email, password: &Password, role: Role) -> ServiceResult<User> {
    email.check_mailable()?;
    let hash = password.hash().await?;
    let mut conn = db::conn(db).await?;
    let row: UserRow = diesel::insert_into(users::table)
        .values((users::email.eq(email.as_str()), users::password_hash.eq(hash), users::role.eq(role.as_str())))
        .returning(UserRow::as_returning())
        .get_result(&mut conn)
        .await
        .map_err(|e| match ServiceError::from(e) {
            ServiceError::Conflict(_) => {
                ServiceError::Conflict(format!("an account for {} already exists", email.as_str()))
            }
            other => other,
        })?;
    row.into_user()
}

pub async fn find_user_by_email(db: &DbPool, email: &Email) -> ServiceResult<Option<User>> {
    let mut conn = db::conn(db).await?;
    let row: Option<UserRow> = users::table
        .filter(users::email.eq(email.as_str()))
        .select(UserRow::as_select())
        .first(&mut conn)
        .await
        .optional()?;
    row.map(UserRow::into_user).transpose()
}

/// Where a sign-in, or a password check, comes from.
#[derive(Debug, Clone, Copy)]
pub struct SignInFrom<'a> {
    /// The network client, as the sign-in throttle counts it ([`client_address`]).
    pub client: &'a str,
    /// The browser's known-device token, if it presented one ([`known_devices`]).
    pub device: Option<&'a known_devices::DeviceToken>,
    /// Its `User-Agent`, which names a new session in the account's list.
    pub user_agent: Option<&'a str>,
}

impl<'a> SignInFrom<'a> {
    /// A client that says nothing more about itself.
    pub fn client(client: &'a str) -> Self {
        Self { client, device: None, user_agent: None }
    }
}

/// Checks an email and password. Failures are counted per address and per client (or per
/// browser, for one that signed in to the address before), and after a few of them further
/// attempts are refused for a while, even with the right password.
pub async fn authenticate(
    services: &crate::Services,
    email_raw: &str,
    password_raw: &str,
    from: &SignInFrom<'_>,
) -> ServiceResult<User> {
    let SignInFrom { client, device, .. } = *from;
    let db = &services.db;
    // Counted before the address is even read: malformed ones are failed sign-ins too, and
    // must not be an unthrottled way to fill the logs. Counted as the address would be stored
    // (trimmed, lower-cased), and never longer than an address can be.
    let counted: String = email_raw.trim().to_lowercase().chars().take(254).collect();
    let mut who = login_throttle::Attempter::Client(client);
    if let Some(device) = device {
        match known_devices::recognizes(db, device, &counted).await {
            Ok(true) => who = login_throttle::Attempter::KnownDevice { device, client },
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not tell whether the browser signed in before"),
        }
    }
    let throttle = login_throttle::LoginThrottle::new(&services.redis, &services.namespace, &counted, who);
    throttle.begin().await?;
    // Malformed input is simply a failed sign-in: same message, nothing revealed.
    let email = Email::parse(email_raw).map_err(|_| ServiceError::invalid(BAD_CREDENTIALS))?;

    let stored: Option<(UserRow, String, Option<DateTime<Utc>>)> = {
        let mut conn = db::conn(db).await?;
        users::table
            .filter(users::email.eq(email.as_str()))
            .select((UserRow::as_select(), users::password_hash, users::disabled_at))
            .first(&mut conn)
            .await
            .optional()?
    };
    let (row, hash, disabled) = match stored {
        Some((row, hash, disabled)) => (Some(row), hash, disabled.is_some()),
        None => (None, password::dummy_hash().to_owned(), false),
    };
    // Verify even for unknown addresses so both cases take the same time.
    let ok = password::verify(password_raw, &hash).await? && row.is_some();
    match row {
        Some(row) if ok => {
            throttle.succeeded().await;
            if disabled {
                return Err(ServiceError::invalid(ACCOUNT_DISABLED));
            }
            row.into_user()
        }
        // The attempt stays counted against both allowances.
        _ => Err(ServiceError::invalid(BAD_CREDENTIALS)),
    }
}

/// What a signed-in user types to change their password.
pub struct PasswordChange<'a> {
    pub current: &'a str,
    pub new: &'a str,
    pub confirm: &'a str,
}

/// Changes a signed-in user's password. The current one is checked like a sign-in, under the
/// same throttle (a session left open on a shared computer must not become a way to guess it);
/// the new one must meet the policy, match its confirmation and differ from the current one.
/// Every session of the account ends, so whoever else was signed in must sign in again; the one
/// making the change goes on under a new token (whoever might hold the old cookie is out too).
/// Returns how many other sessions ended, and the new session.
pub async fn change_password(
    services: &crate::Services,
    user: &User,
    current: &sessions::SessionToken,
    change: &PasswordChange<'_>,
    from: &SignInFrom<'_>,
) -> ServiceResult<(usize, sessions::SessionToken)> {
    // The cheap checks first: a typo in the new password costs no sign-in attempt.
    let new = Password::parse(change.new).map_err(|e| e.in_field("new_password"))?;
    if change.confirm != change.new {
        return Err(ServiceError::invalid_field("confirm_password", "The two new passwords differ."));
    }
    let checked = authenticate(services, &user.email, change.current, from).await.map_err(|e| match e {
        ServiceError::Invalid { .. } => {
            ServiceError::invalid_field("current_password", "That is not your current password.")
        }
        other => other,
    })?;
    if checked.id != user.id {
        return Err(ServiceError::Forbidden);
    }
    if change.new == change.current {
        return Err(ServiceError::invalid_field("new_password", "The new password is the one you have now."));
    }
    let by = PasswordChangedBy::SignedIn { keep: current };
    let ended = store_password(&services.db, user, &new, by, &services.settings.public_url).await?;
    let session = sessions::create(&services.db, user.id, from.user_agent).await?;
    tracing::info!(user_id = user.id, other_sessions_ended = ended, "password changed");
    Ok((ended, session))
}

/// An operator's reset (`keymeter user set-password`): sets the password of the account with
/// this address and ends all of its sessions. Returns the account and how many sessions ended.
pub async fn reset_password(
    db: &DbPool,
    email: &Email,
    new: &Password,
    public_url: &PublicUrl,
) -> ServiceResult<(User, usize)> {
    let user = find_user_by_email(db, email).await?.ok_or(ServiceError::NotFound)?;
    let ended = store_password(db, &user, new, PasswordChangedBy::Operator, public_url).await?;
    tracing::info!(user_id = user.id, sessions_ended = ended, "password reset by an operator");
    Ok((user, ended))
}

/// An account as the admins' list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSummary {
    pub user: User,
    pub disabled_at: Option<DateTime<Utc>>,
    /// Keys not revoked.
    pub active_keys: i64,
}

/// Accounts by address, `limit` of them after the first `offset`, only those whose address
/// contains `search` (as typed: `%` and `_` are not wildcards) when it is given.
pub async fn search_accounts(db: &DbPool, search: &str, offset: i64, limit: i64) -> ServiceResult<Vec<AccountSummary>> {
    use crate::schema::api_keys;
    // PostgreSQL refuses a NUL byte in text: bad input, not a failure.
    crate::text::check_typed("The search", search)?;
    let mut conn = db::conn(db).await?;
    let mut query = users::table
        .order(users::email)
        .offset(offset.max(0))
        .limit(limit)
        .select((UserRow::as_select(), users::disabled_at))
        .into_boxed();
    let search = search.trim();
    if !search.is_empty() {
        query = query.filter(users::email.ilike(crate::text::contains_pattern(search)));
    }
    let rows: Vec<(UserRow, Option<DateTime<Utc>>)> = query.load(&mut conn).await?;
    let ids: Vec<i64> = rows.iter().map(|(row, _)| row.id).collect();
    let keys: Vec<(i64, i64)> = api_keys::table
        .filter(api_keys::owner_id.eq_any(&ids))
        .filter(api_keys::revoked_at.is_null())
        .group_by(api_keys::owner_id)
        .select((api_keys::owner_id, diesel::dsl::count_star()))
        .load(&mut conn)
        .await?;
    rows.into_iter()
        .map(|(row, disabled_at)| {
            let active_keys = keys.iter().find(|(owner, _)| *owner == row.id).map_or(0, |(_, n)| *n);
            Ok(AccountSummary { user: row.into_user()?, disabled_at, active_keys })
        })
        .collect()
}

/// What an operator's switch of an account did.
#[derive(Debug)]
pub struct Switched {
    pub user: User,
    /// False when the account already was as asked (a disabled one keeps its first date).
    pub changed: bool,
    pub sessions_ended: usize,
}

/// An operator's switch (`keymeter user disable` / `enable`), or an admin's on `/admin/accounts`. A disabled account cannot sign
/// in, all of its sessions end and its browsers are no longer known; its API keys are left as
/// they are (a merchant's integration is stopped by revoking them). The last admin who can
/// sign in is never disabled (a [`ServiceError::Conflict`]).
pub async fn set_disabled(db: &DbPool, email: &Email, disabled: bool) -> ServiceResult<Switched> {
    use diesel_async::AsyncConnection;
    let mut conn = db::conn(db).await?;
    conn.transaction::<_, ServiceError, _>(|conn| {
        Box::pin(async move {
            let account = users::table.filter(users::email.eq(email.as_str()));
            if disabled {
                // The enabled admins are locked: two admins disabling each other at once cannot
                // both succeed (the second sees the first's change).
                let admins: Vec<String> = users::table
                    .filter(users::role.eq(Role::Admin.as_str()))
                    .filter(users::disabled_at.is_null())
                    .select(users::email)
                    .for_update()
                    .load(conn)
                    .await?;
                if admins == [email.as_str()] {
                    return Err(ServiceError::Conflict(format!(
                        "{} is the last admin who can sign in: make another admin first",
                        email.as_str()
                    )));
                }
            }
            let switched: Option<UserRow> = if disabled {
                diesel::update(account.filter(users::disabled_at.is_null()))
                    .set(users::disabled_at.eq(Utc::now()))
                    .returning(UserRow::as_returning())
                    .get_result(conn)
                    .await
                    .optional()?
            } else {
                diesel::update(account.filter(users::disabled_at.is_not_null()))
                    .set(users::disabled_at.eq(None::<DateTime<Utc>>))
                    .returning(UserRow::as_returning())
                    .get_result(conn)
                    .await
                    .optional()?
            };
            let Some(row) = switched else {
                let user = account.select(UserRow::as_select()).first(conn).await.optional()?;
                let user = user.ok_or(ServiceError::NotFound)?.into_user()?;
                return Ok(Switched { user, changed: false, sessions_ended: 0 });
            };
            let user = row.into_user()?;
            let sessions_ended = if disabled {
                // A link mailed before must not set a password once the account is enabled again.
                password_reset::void_links(conn, user.id).await?;
                known_devices::forget_all(conn, user.id).await?;
                sessions::end_all(conn, user.id, None).await?
            } else {
                0
            };
            Ok(Switched { user, changed: true, sessions_ended })
        })
    })
    .await
}

/// An admin's switch on `/admin/accounts`: as [`set_disabled`], and an admin cannot disable
/// their own account (they would be signed out of the page they did it on, and could not undo it).
pub async fn set_disabled_by(db: &DbPool, admin: &User, email: &Email, disabled: bool) -> ServiceResult<Switched> {
    if disabled && email.as_str() == admin.email {
        return Err(ServiceError::invalid("You cannot disable your own account."));
    }
    set_disabled(db, email, disabled).await
}

/// Stores a new password, ends the account's sessions and forgets its browsers, in one
/// transaction: no session signed in with the old password outlives the change, and no browser
/// it was used from keeps a sign-in count of its own. Returns how many live sessions ended (all
/// but the one `by` keeps).
async fn store_password(
    db: &DbPool,
    user: &User,
    new: &Password,
    by: PasswordChangedBy<'_>,
    public_url: &PublicUrl,
) -> ServiceResult<usize> {
    use diesel_async::AsyncConnection;
    let hash = new.hash().await?;
    let mut conn = db::conn(db).await?;
    conn.transaction::<_, ServiceError, _>(|conn| {
        Box::pin(async move { replace_password(conn, user, &hash, by, public_url).await })
    })
    .await
}

/// How a password was replaced: which sessions end, and what the owner's notice says.
#[derive(Clone, Copy)]
pub(crate) enum PasswordChangedBy<'a> {
    /// Through a reset link mailed to the account's address.
    MailedLink,
    /// On the account page, by someone signed in who knew the current password: the session it
    /// was changed in stays (`keep`).
    SignedIn { keep: &'a sessions::SessionToken },
    /// By the platform's operator (`keymeter user set-password`).
    Operator,
}

/// [`store_password`]'s work inside the caller's transaction, with the new password's hash. The
/// account's unused reset links stop working too, and its owner is told by email and in the
/// bell: whoever changed it, the owner should know (someone else may have).
async fn replace_password(
    conn: &mut diesel_async::AsyncPgConnection,
    user: &User,
    hash: &str,
    by: PasswordChangedBy<'_>,
    public_url: &PublicUrl,
) -> ServiceResult<usize> {
    let updated = diesel::update(users::table.find(user.id)).set(users::password_hash.eq(hash)).execute(conn).await?;
    if updated == 0 {
        return Err(ServiceError::NotFound);
    }
    password_reset::void_links(conn, user.id).await?;
    known_devices::forget_all(conn, user.id).await?;
    let kept = match by {
        PasswordChangedBy::SignedIn { keep } => Some(keep),
        PasswordChangedBy::MailedLink | PasswordChangedBy::Operator => None,
    };
    let ended = sessions::end_all(conn, user.id, kept).await?;
    tell_password_changed(conn, user, by, public_url).await?;
    Ok(ended)
}

/// The owner's notice of a new password.
async fn tell_password_changed(
    conn: &mut diesel_async::AsyncPgConnection,
    user: &User,
    by: PasswordChangedBy<'_>,
    public_url: &PublicUrl,
) -> ServiceResult<()> {
    // Only a change on the account page keeps the session it was made in.
    let (how, sessions, then) = match by {
        PasswordChangedBy::MailedLink => (
            "through a link mailed to this address",
            "every session",
            "If this was not you, tell your keymeter administrator at once: someone can read your email.",
        ),
        PasswordChangedBy::SignedIn { .. } => (
            "on the account page, by someone signed in who knew the current password",
            "every other session",
            "If this was not you, someone knows your password: choose a new one at once with \"Forgot your \
             password?\" on the sign-in page, and tell your keymeter administrator.",
        ),
        PasswordChangedBy::Operator => (
            "by the platform's operator",
            "every session",
            "If you did not ask for this, tell your keymeter administrator.",
        ),
    };
    let body = format!(
        "The password of your keymeter account {} was changed at {} {how}, and {sessions} was signed out. \
         {then}",
        user.email,
        format::time(&Utc::now()),
    );
    let news = notifications::News {
        kind: "password_changed",
        title: "Your keymeter password was changed",
        body: &body,
        link: "/dashboard/account",
        link_label: "Your account",
        dedupe_key: None,
    };
    notifications::tell(conn, (user.id, &user.email), &news, public_url).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_trimmed_and_lowercased() {
        assert_eq!(Email::parse("  Ann@Example.COM ").unwrap().as_str(), "ann@example.com");
    }

    #[test]
    fn malformed_emails_are_refused() {
        for bad in ["", "ann", "@example.com", "ann@", "a b@example.com", "ann@@example.com", "ann@.com", "ann@x."] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
        for bad in ["a\"<script>@b.com", "a<b@c.com", "ann@exa mple.com", "ann@[1.2.3.4]x"] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    /// New accounts only: one made before the rule is still found when its owner signs in.
    #[test]
    fn addresses_mail_cannot_reach_are_refused_for_new_accounts_with_a_reason() {
        for unreachable in ["zo\u{eb}@ex\u{e4}mple.com", "ann@\u{65e5}\u{672c}.jp"] {
            let email = Email::parse(unreachable).expect("still an address to look up");
            let err = email.check_mailable().unwrap_err();
            assert!(err.to_string().contains("xn-- form"), "{unreachable:?}: {err}");
        }
        assert!(Email::parse("zoe@xn--exmple-cua.com").unwrap().check_mailable().is_ok());
    }

    /// Whatever is accepted, the mailer can address (it parses the recipient as a mailbox).
    #[test]
    fn accepted_emails_are_mailboxes() {
        for good in ["ann@example.com", "a.b+tag@sub.example.co", "o'neil@example.com", "x{y}|z~@example.com"] {
            let email = Email::parse(good).unwrap();
            assert!(email.as_str().parse::<lettre::message::Mailbox>().is_ok(), "{good:?}");
        }
    }

    #[test]
    fn roles_parse() {
        assert_eq!(Role::parse("admin").unwrap(), Role::Admin);
        assert_eq!(Role::parse("merchant").unwrap(), Role::Merchant);
        assert!(Role::parse("root").is_err());
    }
}
