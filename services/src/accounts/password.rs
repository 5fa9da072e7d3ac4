//! Password hashing with argon2id; hashing runs on the blocking pool so it never stalls requests.

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
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| ServiceError::Internal(format!("password hashing failed: {e}")))
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?
    }
}

/// Whether `candidate` matches the stored hash. Over-long input is rejected before hashing.
pub(crate) async fn verify(candidate: &str, stored_hash: &str) -> ServiceResult<bool> {
    if candidate.len() > 4 * Password::MAX_LEN {
        return Ok(false);
    }
    let candidate = candidate.to_owned();
    let stored = stored_hash.to_owned();
    tokio::task::spawn_blocking(move || {
        let parsed =
            PasswordHash::new(&stored).map_err(|e| ServiceError::Internal(format!("stored hash unreadable: {e}")))?;
        Ok(Argon2::default().verify_password(candidate.as_bytes(), &parsed).is_ok())
    })
    .await
    .map_err(|e| ServiceError::Internal(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

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
