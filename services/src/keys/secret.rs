//! The API key secret: `km_live_` followed by 40 random base62 characters (about 238 bits).
//! Only its SHA-256 is stored; a high-entropy secret needs no slow hash.

use rand::Rng;
use sha2::{Digest, Sha256};

pub const SECRET_PREFIX: &str = "km_live_";
const RANDOM_LEN: usize = 40;
/// Characters of the random part that are kept visible, so people can tell keys apart.
const VISIBLE_RANDOM_CHARS: usize = 6;
const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a presented key was not even looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedKey {
    #[error("the API key must start with {SECRET_PREFIX}")]
    Prefix,
    #[error("the API key has the wrong length")]
    Length,
    #[error("the API key contains invalid characters")]
    Characters,
}

/// A well-formed key secret. `Debug` shows only the visible prefix, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeySecret(String);

impl std::fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeySecret({}…)", self.visible_prefix())
    }
}

impl ApiKeySecret {
    pub fn generate() -> Self {
        let mut rng = rand::rngs::OsRng;
        let random: String = (0..RANDOM_LEN).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect();
        Self(format!("{SECRET_PREFIX}{random}"))
    }

    /// Checks the shape of a presented key without touching any storage.
    pub fn parse(raw: &str) -> Result<Self, MalformedKey> {
        let random = raw.strip_prefix(SECRET_PREFIX).ok_or(MalformedKey::Prefix)?;
        if random.len() != RANDOM_LEN {
            return Err(MalformedKey::Length);
        }
        if !random.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(MalformedKey::Characters);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The full secret, to show once to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What lists and logs may show, e.g. `km_live_a1B2c3`.
    pub fn visible_prefix(&self) -> &str {
        &self.0[..SECRET_PREFIX.len() + VISIBLE_RANDOM_CHARS]
    }

    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_differ() {
        let a = ApiKeySecret::generate();
        let b = ApiKeySecret::generate();
        assert_ne!(a, b);
        assert_eq!(ApiKeySecret::parse(a.expose()).unwrap(), a);
        assert_eq!(a.expose().len(), SECRET_PREFIX.len() + RANDOM_LEN);
        assert!(a.visible_prefix().starts_with("km_live_"));
        assert_eq!(a.visible_prefix().len(), 14);
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert_eq!(ApiKeySecret::parse(""), Err(MalformedKey::Prefix));
        assert_eq!(ApiKeySecret::parse("sk_live_abc"), Err(MalformedKey::Prefix));
        assert_eq!(ApiKeySecret::parse("km_live_abc"), Err(MalformedKey::Length));
        let bad = format!("km_live_{}", "é".repeat(20));
        assert!(ApiKeySecret::parse(&bad).is_err());
        let bad = format!("km_live_{}-", "a".repeat(39));
        assert_eq!(ApiKeySecret::parse(&bad), Err(MalformedKey::Characters));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = ApiKeySecret::generate();
        let shown = format!("{key:?}");
        assert!(!shown.contains(key.expose()));
        assert!(shown.contains(key.visible_prefix()));
    }

    /// Bad input never panics and is judged by the documented shape alone.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn base62(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
            proptest::collection::vec(prop::sample::select(ALPHABET), len)
                .prop_map(|bytes| bytes.into_iter().map(char::from).collect())
        }

        /// The shape the module doc promises, written independently of `parse`.
        fn well_formed(raw: &str) -> bool {
            raw.strip_prefix(SECRET_PREFIX)
                .is_some_and(|r| r.len() == RANDOM_LEN && r.bytes().all(|b| b.is_ascii_alphanumeric()))
        }

        /// Inputs that look almost right: the prefix (sometimes mangled) and a suffix that is
        /// nearly 40 base62 characters, with one arbitrary character spliced in now and then.
        fn near_valid() -> impl Strategy<Value = String> {
            let prefix = prop_oneof![
                4 => Just(SECRET_PREFIX.to_owned()),
                1 => Just("KM_LIVE_".to_owned()),
                1 => Just("km_live".to_owned()),
                1 => Just(" km_live_".to_owned()),
                1 => Just("km_test_".to_owned()),
            ];
            let body = base62(RANDOM_LEN - 4..=RANDOM_LEN + 4);
            (prefix, body, any::<Option<(prop::sample::Index, char)>>()).prop_map(|(prefix, body, splice)| {
                let mut body: Vec<char> = body.chars().collect();
                if let Some((at, c)) = splice {
                    let i = at.index(body.len());
                    body[i] = c;
                }
                format!("{prefix}{}", body.into_iter().collect::<String>())
            })
        }

        fn any_input() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "\\PC{0,100}",
                // Very long, including multi-byte characters (built by repetition: generating
                // thousands of random characters per case would make the test slow).
                (any::<char>(), 1000..5000usize, any::<String>())
                    .prop_map(|(c, n, tail)| format!("{SECRET_PREFIX}{}{tail}", c.to_string().repeat(n))),
                "km_live_.{0,60}",
                near_valid(),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn parse_never_panics_and_follows_the_shape(raw in any_input()) {
                let parsed = ApiKeySecret::parse(&raw);
                prop_assert_eq!(parsed.is_ok(), well_formed(&raw), "input {:?}", raw);
                if let Ok(secret) = parsed {
                    prop_assert_eq!(secret.expose(), raw.as_str());
                    prop_assert_eq!(ApiKeySecret::parse(secret.expose()), Ok(secret.clone()));
                    prop_assert!(secret.expose().starts_with(secret.visible_prefix()));
                    prop_assert!(secret.visible_prefix().starts_with(SECRET_PREFIX));
                    prop_assert_eq!(secret.visible_prefix().len(), SECRET_PREFIX.len() + VISIBLE_RANDOM_CHARS);
                    let shown = format!("{secret:?}");
                    prop_assert!(!shown.contains(secret.expose()));
                }
            }

            #[test]
            fn every_well_formed_secret_is_accepted(body in base62(RANDOM_LEN..=RANDOM_LEN)) {
                let raw = format!("{SECRET_PREFIX}{body}");
                let secret = ApiKeySecret::parse(&raw).expect("well-formed");
                prop_assert_eq!(secret.expose(), raw.as_str());
                prop_assert_eq!(secret.hash(), ApiKeySecret::parse(&raw).unwrap().hash());
            }
        }

        #[test]
        fn generated_secrets_always_parse() {
            for _ in 0..2000 {
                let key = ApiKeySecret::generate();
                assert!(well_formed(key.expose()), "{}", key.expose());
                assert_eq!(ApiKeySecret::parse(key.expose()), Ok(key.clone()));
                assert!(key.expose().starts_with(key.visible_prefix()));
            }
        }
    }
}
