//! A new key's secret for the page that a plain form post (no JavaScript) returns to. Such a post
//! is answered with a redirect, and a secret must never go into a URL (history, server logs,
//! `Referer`), so it waits in Redis under a random one-time token, tied to its owner, for two
//! minutes. The page takes it (GETDEL) and shows it once, as the scripted form shows its reply.

use serde::{Deserialize, Serialize};

use super::{ApiKeyId, ApiKeySecret};
use crate::accounts::token::{Handoff, Token};
use crate::redis_pool::{self, RedisPool};
use crate::{ServiceError, ServiceResult};

/// Long enough to follow a redirect on a slow connection; short, as the secret is in clear.
const HOLD_SECS: u64 = 120;

/// The one-time token in the page's URL (`?created=…`): a random token as a session's, hidden
/// in `Debug` output (it takes a secret out of Redis).
pub type HandoffToken = Token<Handoff>;

#[derive(Serialize, Deserialize)]
struct Held {
    key_id: uuid::Uuid,
    secret: String,
}

/// Named by the token's hash: whoever can list Redis' keys cannot take the secret with them.
fn redis_key(owner_id: i64, token: &HandoffToken) -> String {
    format!("km:created:{owner_id}:{}", hex::encode(token.hash()))
}

/// Keeps `secret` of the key `key_id` for its owner's next page.
pub async fn hold(
    redis: &RedisPool,
    owner_id: i64,
    key_id: ApiKeyId,
    secret: &ApiKeySecret,
) -> ServiceResult<HandoffToken> {
    let token = HandoffToken::generate();
    let held = serde_json::to_string(&Held { key_id: key_id.0, secret: secret.expose().to_owned() })
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    let mut conn = redis_pool::conn(redis).await?;
    let () = redis::cmd("SET")
        .arg(redis_key(owner_id, &token))
        .arg(held)
        .arg("EX")
        .arg(HOLD_SECS)
        .query_async(&mut conn)
        .await?;
    Ok(token)
}

/// The secret held under `token` for `owner_id`, once: a second call, another user, or a token
/// older than two minutes gets `None`.
pub async fn take(
    redis: &RedisPool,
    owner_id: i64,
    token: &HandoffToken,
) -> ServiceResult<Option<(ApiKeyId, ApiKeySecret)>> {
    let mut conn = redis_pool::conn(redis).await?;
    let held: Option<String> = redis::cmd("GETDEL").arg(redis_key(owner_id, token)).query_async(&mut conn).await?;
    let Some(held) = held else { return Ok(None) };
    let held: Held = serde_json::from_str(&held).map_err(|e| ServiceError::Internal(e.to_string()))?;
    let secret = ApiKeySecret::parse(&held.secret).map_err(|e| ServiceError::Internal(e.to_string()))?;
    Ok(Some((ApiKeyId(held.key_id), secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_back_and_nothing_else_does() {
        let token = HandoffToken::generate();
        assert_eq!(HandoffToken::parse(token.as_str()), Some(token.clone()));
        assert_ne!(HandoffToken::generate(), token);
        assert_eq!(format!("{token:?}"), "HandoffToken(..)");
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(32), &"a".repeat(65), "km:created:1:x"] {
            assert_eq!(HandoffToken::parse(bad), None, "{bad}");
        }
    }
}
