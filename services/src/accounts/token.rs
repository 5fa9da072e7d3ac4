//! The random tokens a browser holds in cookies (its session, and the mark of a browser that
//! signed in before) and in links (a password reset; a new key's secret handed to the page a
//! plain form post returns to). The stores keep only their SHA-256, so a leaked database or
//! Redis cannot be replayed as cookies or links. Each kind is its own type: one cannot be taken
//! for the other.

use std::marker::PhantomData;

use rand::RngCore;
use sha2::{Digest, Sha256};

/// What a token is for; names it in `Debug` output (never its value).
pub trait TokenKind {
    const NAME: &'static str;
}

/// A session cookie's token.
#[derive(Clone, PartialEq, Eq)]
pub enum Session {}

impl TokenKind for Session {
    const NAME: &'static str = "SessionToken";
}

/// A known browser's token (see `known_devices`).
#[derive(Clone, PartialEq, Eq)]
pub enum Device {}

impl TokenKind for Device {
    const NAME: &'static str = "DeviceToken";
}

/// A password reset link's token (see `password_reset`).
#[derive(Clone, PartialEq, Eq)]
pub enum Reset {}

impl TokenKind for Reset {
    const NAME: &'static str = "ResetToken";
}

/// The hand-off of a new key's secret (see `keys::secret_handoff`).
#[derive(Clone, PartialEq, Eq)]
pub enum Handoff {}

impl TokenKind for Handoff {
    const NAME: &'static str = "HandoffToken";
}

/// An opaque token as sent in a cookie or a link (64 hex characters, 256 random bits).
#[derive(Clone, PartialEq, Eq)]
pub struct Token<K> {
    value: String,
    kind: PhantomData<K>,
}

impl<K: TokenKind> std::fmt::Debug for Token<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}(..)", K::NAME)
    }
}

impl<K> Token<K> {
    pub(crate) fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self { value: hex::encode(bytes), kind: PhantomData }
    }

    /// Accepts only what [`generate`](Self::generate) produces; anything else is no token.
    pub fn parse(raw: &str) -> Option<Self> {
        (raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self { value: raw.to_ascii_lowercase(), kind: PhantomData })
    }

    pub fn as_str(&self) -> &str {
        &self.value
    }

    pub(crate) fn hash(&self) -> Vec<u8> {
        Sha256::digest(self.value.as_bytes()).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let t = Token::<Session>::generate();
        assert_eq!(Token::parse(t.as_str()), Some(t.clone()));
        assert_eq!(Token::<Session>::parse(&t.as_str().to_ascii_uppercase()), Some(t.clone()));
        assert!(Token::<Session>::parse("").is_none());
        assert!(Token::<Session>::parse(&"z".repeat(64)).is_none());
        assert!(Token::<Session>::parse(&"a".repeat(63)).is_none());
        assert_eq!(format!("{t:?}"), "SessionToken(..)");
        assert_eq!(format!("{:?}", Token::<Device>::generate()), "DeviceToken(..)");
        assert_ne!(Token::<Device>::generate(), Token::<Device>::generate());
    }
}
