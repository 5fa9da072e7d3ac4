//! Password hashing with argon2id; hashing runs on the blocking pool so it never stalls requests,
//! a few at a time.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::{ServiceError, ServiceResult};

/// A hash of a random password nobody knows, verified against when the address is unknown so
/// that a sign-in takes as long whether or not the account exists.
pub(crate) fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        let secret = SaltString::generate(&mut OsRng);
        Argon2::default().hash_password(secret.as_str().as_bytes(), &salt).map(|h| h.to_string()).unwrap_or_default()
    })
}

/// A new password that meets the policy. Never logged: `Debug` is redacted.
#[derive(Clone)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

impl Password {
    pub const MIN_LEN: usize = 10;
    pub const MAX_LEN: usize = 256;

    pub fn parse(raw: &str) -> ServiceResult<Self> {
        let len = raw.chars().count();
        if len < Self::MIN_LEN {
            return Err(ServiceError::invalid(format!("The password needs at least {} characters.", Self::MIN_LEN)));
        }
        if raw.trim().is_empty() {
            return Err(ServiceError::invalid("The password cannot be only spaces."));
        }
        if len > Self::MAX_LEN {
            return Err(ServiceError::invalid(format!("The password can have at most {} characters.", Self::MAX_LEN)));
        }
        Ok(Self(raw.to_owned()))
    }

    pub(crate) async fn hash(&self) -> ServiceResult<String> {
        let password = self.0.clone();
        with_hashing_slot(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| ServiceError::Internal(format!("password hashing failed: {e}")))
        })
        .await
    }
}

/// Whether `candidate` matches the stored hash. Over-long input is rejected before hashing.
pub(crate) async fn verify(candidate: &str, stored_hash: &str) -> ServiceResult<bool> {
    if candidate.len() > 4 * Password::MAX_LEN {
        return Ok(false);
    }
    let candidate = candidate.to_owned();
    let stored = stored_hash.to_owned();
    with_hashing_slot(move || {
        let parsed =
            PasswordHash::new(&stored).map_err(|e| ServiceError::Internal(format!("stored hash unreadable: {e}")))?;
        Ok(Argon2::default().verify_password(candidate.as_bytes(), &parsed).is_ok())
    })
    .await
}

/// Runs argon2 work on the blocking pool once one of the [`hashing_slots`] is free. Each run holds
/// 19 MiB and a core for tens of milliseconds, and the sign-in throttle counts an attempt
/// before its password is checked: a burst of sign-ins (many addresses, many clients) would
/// otherwise take memory and blocking threads without bound. Past [`HASHING_WAIT`] the caller
/// is told to try again in a second.
async fn with_hashing_slot<T: Send + 'static>(
    work: impl FnOnce() -> ServiceResult<T> + Send + 'static,
) -> ServiceResult<T> {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    with_slot(SLOTS.get_or_init(|| tokio::sync::Semaphore::new(hashing_slots())), HASHING_WAIT, work).await
}

async fn with_slot<T: Send + 'static>(
    slots: &tokio::sync::Semaphore,
    wait: std::time::Duration,
    work: impl FnOnce() -> ServiceResult<T> + Send + 'static,
) -> ServiceResult<T> {
    let _slot = tokio::time::timeout(wait, slots.acquire())
        .await
        .map_err(|_| ServiceError::TooManyAttempts { retry_after_secs: 1 })?
        .map_err(|e| ServiceError::Internal(format!("the hashing slots are closed: {e}")))?;
    tokio::task::spawn_blocking(work).await.map_err(|e| ServiceError::Internal(e.to_string()))?
}

/// How many argon2 runs at once: two per core keeps the cores busy while one run waits to be
/// scheduled.
fn hashing_slots() -> usize {
    2 * std::thread::available_parallelism().map_or(1, usize::from)
}

/// Longest wait for a hashing slot: a burst of sign-ins is worked through in that time; past
/// it the server is busier than a person waiting at a form should notice.
const HASHING_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashing_waits_for_a_free_slot_and_gives_up_after_a_while() {
        let slots = tokio::sync::Semaphore::new(1);
        let wait = std::time::Duration::from_millis(100);
        assert_eq!(with_slot(&slots, wait, || Ok(1)).await.unwrap(), 1, "a free slot");
        let taken = slots.acquire().await.unwrap();
        let started = std::time::Instant::now();
        let busy = with_slot(&slots, wait, || Ok(2)).await;
        assert!(matches!(busy, Err(ServiceError::TooManyAttempts { retry_after_secs: 1 })), "{busy:?}");
        assert!(started.elapsed() >= wait);
        drop(taken);
        assert_eq!(with_slot(&slots, wait, || Ok(3)).await.unwrap(), 3, "free again");
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let pw = Password::parse("correct horse battery").unwrap();
        let hash = pw.hash().await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify("correct horse battery", &hash).await.unwrap());
        assert!(!verify("wrong horse battery", &hash).await.unwrap());
    }

    #[tokio::test]
    async fn dummy_hash_is_well_formed() {
        assert!(!verify("anything at all", dummy_hash()).await.unwrap());
    }

    #[test]
    fn policy() {
        assert!(Password::parse("short").is_err());
        assert!(Password::parse(&"x".repeat(300)).is_err());
        assert!(Password::parse("long enough pass").is_ok());
        assert!(Password::parse(&" ".repeat(12)).is_err());
        assert!(Password::parse("\t \u{a0}\u{2003}          ").is_err());
        assert_eq!(format!("{:?}", Password::parse("long enough pass").unwrap()), "Password(..)");
    }
}
