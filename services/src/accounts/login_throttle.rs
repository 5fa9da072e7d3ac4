//! Slows down password guessing: failures are counted in Redis, so every instance sees them;
//! past a threshold, sign-in is refused until the window ends.
//!
//! Three counts, each over a fixed window that starts at its first failure: per address and
//! client (a few guesses, then that client is locked out of that address), per address across
//! clients (many more: guessing spread over many clients), and per client across addresses.
//! A browser that signed in to the address before (`known_devices`) has one count of its own
//! instead, so that strangers' guesses, which fill the other two, never lock the owner out. A
//! refused attempt is given back and never moves a window, so nobody can keep an account locked
//! by trying again, and a stranger's failures from elsewhere do not lock its owner out until the
//! address-wide count is reached.
//!
//! Each address also keeps the set of clients it was tried from (for the window), so that an
//! operator setting a new password can lift its lockout ([`lift`]) without scanning keys.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_redis::redis;

use super::known_devices::DeviceToken;
use crate::outage_log::LogEvery;
use crate::redis_pool::{self, RedisPool};
use crate::{ServiceError, ServiceResult};

/// Sign-in attempts come as fast as anyone sends them: Redis trouble they meet is logged once
/// in a while, not per attempt.
static REDIS_TROUBLE_LOG: LogEvery = LogEvery::new();

/// Failed attempts allowed per window before sign-in is refused.
const MAX_FAILURES_PER_EMAIL_AND_CLIENT: i64 = 5;
const MAX_FAILURES_PER_EMAIL: i64 = 50;
const MAX_FAILURES_PER_CLIENT: i64 = 100;
/// How long failures are remembered, in seconds, from the first one.
const WINDOW_SECS: i64 = 15 * 60;
/// Longest a sign-in waits for the throttle's Redis work, before the password is checked and
/// again after it; past it Redis counts as unreachable. (A hung Redis held sign-in for over
/// 6 s: the pool's timeouts, twice.)
const REDIS_WAIT: Duration = Duration::from_secs(1);

/// Who is signing in, as the throttle counts clients: the peer's address, or behind proxies
/// this deployment trusts (`KEYMETER_TRUSTED_PROXIES`), the address the nearest of them saw:
/// the rightmost `X-Forwarded-For` entry that is not itself a trusted proxy. Entries further
/// left are whatever the client wrote, so they are never used, and a peer that is not trusted
/// cannot choose its address by sending the header.
///
/// Addresses are compared in their canonical form: a dual-stack listener (`[::]`) sees an IPv4
/// proxy as `::ffff:10.0.0.2`, which must still be the trusted `10.0.0.2` (else every user
/// behind it counted as one client). An IPv6 client counts by its /64, the block one
/// subscriber gets, or a single machine could count as millions of clients.
pub fn client_address<'h>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'h str>,
    trusted: &[IpAddr],
) -> String {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|t| t.to_canonical() == ip.to_canonical());
    if !is_trusted(peer) {
        return as_client(peer);
    }
    let hops: Vec<&str> = forwarded_for.into_iter().flat_map(|v| v.split(',')).map(str::trim).collect();
    for hop in hops.into_iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => continue,
            Ok(ip) => return as_client(ip),
            // Not an address: a proxy that writes something else. Counted as it is, never as
            // the proxy itself (which would put everyone behind it under one count).
            Err(_) if !hop.is_empty() => return hop.chars().take(64).collect(),
            Err(_) => break,
        }
    }
    as_client(peer)
}

/// An address as the throttle counts it: IPv4 (mapped ones too) as is, IPv6 by its /64.
fn as_client(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let [a, b, c, d, ..] = v6.segments();
            format!("{}/64", std::net::Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
        }
    }
}

/// Who is trying a password, as the throttle counts attempts.
pub(crate) enum Attempter<'c> {
    /// A network client ([`client_address`]).
    Client(&'c str),
    /// A browser that signed in to this address before, and the network client it is on.
    KnownDevice { device: &'c DeviceToken, client: &'c str },
}

pub(crate) struct LoginThrottle<'a> {
    redis: &'a RedisPool,
    /// (Redis key, allowance), in the order above; the first `own` are this attempter's own at
    /// the address, forgotten when it signs in.
    counts: Vec<(String, i64)>,
    own: usize,
    /// The set of clients the address was tried from, and this attempt's (its network client,
    /// or its browser and network client).
    clients: (String, Vec<String>),
    /// Redis did not confirm counting this attempt: nothing is given back (if it counted it
    /// anyway, the attempt stays counted, as a failed one would).
    skipped: AtomicBool,
}

fn pair_key(namespace: &str, email: &str, client: &str) -> String {
    format!("{namespace}:login:pair:{email}:{client}")
}

fn email_key(namespace: &str, email: &str) -> String {
    format!("{namespace}:login:email:{email}")
}

fn clients_key(namespace: &str, email: &str) -> String {
    format!("{namespace}:login:clients:{email}")
}

/// Forgets the failed sign-ins at `email` (as stored: trimmed, lower-cased), from every client:
/// a lockout of the address ends now. Counts of clients across addresses stay (a client that
/// guessed at many addresses is still slowed down). Returns how many counts were dropped.
pub async fn lift(redis: &RedisPool, namespace: &str, email: &str) -> ServiceResult<usize> {
    let mut conn = redis_pool::conn(redis).await?;
    let set = clients_key(namespace, email);
    let clients: Vec<String> = redis::cmd("SMEMBERS").arg(&set).query_async(&mut conn).await?;
    // One key per command: they live in different cluster slots.
    let mut pipe = redis::pipe();
    for key in clients.iter().map(|c| pair_key(namespace, email, c)).chain([email_key(namespace, email)]) {
        pipe.cmd("DEL").arg(key);
    }
    let dropped: Vec<usize> = pipe.query_async(&mut conn).await?;
    let _: () = redis::cmd("DEL").arg(&set).query_async(&mut conn).await?;
    Ok(dropped.into_iter().sum())
}

impl<'a> LoginThrottle<'a> {
    /// Counts kept under the deployment's Redis namespace (`KEYMETER_REDIS_NAMESPACE`).
    pub(crate) fn new(redis: &'a RedisPool, namespace: &str, email: &str, who: Attempter<'_>) -> Self {
        let (counts, clients) = match who {
            Attempter::Client(client) => (
                vec![
                    (pair_key(namespace, email, client), MAX_FAILURES_PER_EMAIL_AND_CLIENT),
                    (email_key(namespace, email), MAX_FAILURES_PER_EMAIL),
                    (format!("{namespace}:login:client:{client}"), MAX_FAILURES_PER_CLIENT),
                ],
                vec![client.to_owned()],
            ),
            Attempter::KnownDevice { device, client } => {
                // Named by (half) its token's hash: the token itself stays out of Redis.
                let device = format!("device:{}", &hex::encode(device.hash())[..32]);
                // Its failures also count against its network client's allowance at the address
                // (never refused by it): whoever guessed from a known browser gets no fresh
                // tries from a private window next to it.
                let counts = vec![
                    (pair_key(namespace, email, &device), MAX_FAILURES_PER_EMAIL_AND_CLIENT),
                    (pair_key(namespace, email, client), i64::MAX),
                ];
                (counts, vec![device, client.to_owned()])
            }
        };
        // This attempter's own counts are the address-and-client counts of its clients.
        let own = clients.len();
        Self { redis, counts, own, clients: (clients_key(namespace, email), clients), skipped: AtomicBool::new(false) }
    }

    /// Counts this attempt against every allowance before the password is checked, and refuses
    /// it (giving it back) if any is used up. Counting first, with atomic increments, means
    /// parallel guesses cannot all pass a check made before any of them failed. A failed
    /// attempt simply stays counted. If Redis is unreachable, sign-in still works (unthrottled)
    /// rather than locking everyone out.
    pub(crate) async fn begin(&self) -> ServiceResult<()> {
        let deadline = tokio::time::Instant::now() + REDIS_WAIT;
        let Ok(Ok(mut conn)) = tokio::time::timeout_at(deadline, redis_pool::conn(self.redis)).await else {
            crate::warn_every!(REDIS_TROUBLE_LOG, "login throttle skipped: Redis unavailable");
            self.skipped.store(true, Ordering::Relaxed);
            return Ok(());
        };
        // One script per count (separate keys, separate cluster slots), each atomic: a window
        // starts only if none runs, and the count never lacks its expiry, even when a give-back
        // deleted the key between two steps of another attempt.
        const COUNT: &str = "redis.call('SET', KEYS[1], 0, 'NX', 'EX', ARGV[1])\n\
                             local n = redis.call('INCR', KEYS[1])\n\
                             local ttl = redis.call('TTL', KEYS[1])\n\
                             if ttl < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) ttl = tonumber(ARGV[1]) end\n\
                             return {n, ttl}";
        let mut pipe = redis::pipe();
        for (key, _) in &self.counts {
            pipe.cmd("EVAL").arg(COUNT).arg(1).arg(key).arg(WINDOW_SECS);
        }
        // (count, seconds left in its window) of each.
        let result = tokio::time::timeout_at(deadline, pipe.query_async::<Vec<(i64, i64)>>(&mut conn)).await;
        let counted = match result {
            Ok(Ok(counted)) if counted.len() == self.counts.len() => counted,
            _ => {
                crate::warn_every!(REDIS_TROUBLE_LOG, "login throttle skipped: Redis error or no answer");
                self.skipped.store(true, Ordering::Relaxed);
                return Ok(());
            }
        };
        let wait = counted
            .into_iter()
            .zip(&self.counts)
            .filter(|((attempts, _), (_, allowed))| attempts > allowed)
            .map(|((_, ttl), _)| ttl.max(1))
            .max();
        if let Some(wait) = wait {
            self.give_back(&mut conn, true, deadline).await;
            return Err(ServiceError::TooManyAttempts { retry_after_secs: wait as u64 });
        }
        // Counted: the client joins the address's set, kept as long as the newest count can
        // last (a refused attempt, given back, leaves nothing behind).
        let (set, clients) = &self.clients;
        let mut pipe = redis::pipe();
        pipe.cmd("SADD").arg(set).arg(clients).ignore();
        pipe.cmd("EXPIRE").arg(set).arg(WINDOW_SECS).ignore();
        match tokio::time::timeout_at(deadline, pipe.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => crate::warn_every!(REDIS_TROUBLE_LOG, error = %e, "could not note where a sign-in came from"),
            Err(_) => {
                crate::warn_every!(REDIS_TROUBLE_LOG, "could not note where a sign-in came from: Redis did not answer")
            }
        }
        Ok(())
    }

    /// The password was right: this client's (or browser's and its client's) failures at the
    /// address are forgotten, and the attempt counts against nothing. (Failures elsewhere at the address stay counted: one
    /// success must not reset a guessing campaign spread over many clients.)
    pub(crate) async fn succeeded(&self) {
        if self.skipped.load(Ordering::Relaxed) {
            return;
        }
        let deadline = tokio::time::Instant::now() + REDIS_WAIT;
        let forget = async {
            let Ok(mut conn) = redis_pool::conn(self.redis).await else { return };
            // One key per command: they live in different cluster slots.
            let mut pipe = redis::pipe();
            for (key, _) in &self.counts[..self.own] {
                pipe.cmd("DEL").arg(key).ignore();
            }
            let _: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
            self.give_back(&mut conn, false, deadline).await;
        };
        if tokio::time::timeout_at(deadline, forget).await.is_err() {
            crate::warn_every!(REDIS_TROUBLE_LOG, "could not forget a client's failed sign-ins: Redis did not answer");
        }
    }

    /// Takes this attempt off the counts (`own_too`: also off this attempter's own ones).
    async fn give_back(&self, conn: &mut redis_pool::RedisConn, own_too: bool, deadline: tokio::time::Instant) {
        // A window may have ended since the attempt was counted; a bare DECR would then make a
        // count with no expiry, a lockout that never ends. Re-creating it at 1 with a window
        // first makes the give-back land on zero instead. A count back at zero goes: refused
        // attempts at made-up addresses would otherwise each leave two keys for the window.
        // One key per script: the counts live in different cluster slots.
        const GIVE_BACK: &str = "redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[1])\n\
                                 if redis.call('DECR', KEYS[1]) <= 0 then redis.call('DEL', KEYS[1]) end\n\
                                 return 0";
        let keys = self.counts.iter().skip(if own_too { 0 } else { self.own }).map(|(key, _)| key);
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("EVAL").arg(GIVE_BACK).arg(1).arg(key).arg(WINDOW_SECS).ignore();
        }
        if pipe.is_empty() {
            return;
        }
        match tokio::time::timeout_at(deadline, pipe.query_async::<()>(conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => crate::warn_every!(REDIS_TROUBLE_LOG, error = %e, "could not give a sign-in attempt back"),
            Err(_) => {
                crate::warn_every!(REDIS_TROUBLE_LOG, "could not give a sign-in attempt back: Redis did not answer")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let proxy = [ip("10.0.0.2")];
        // Not trusted: whatever it claims is ignored.
        assert_eq!(client_address(ip("198.51.100.7"), ["203.0.113.5"], &proxy), "198.51.100.7");
        assert_eq!(client_address(ip("198.51.100.7"), ["203.0.113.5"], &[]), "198.51.100.7");
        // Trusted: the address it saw, however much the client prepended.
        assert_eq!(client_address(ip("10.0.0.2"), ["1.2.3.4, 203.0.113.5"], &proxy), "203.0.113.5");
        assert_eq!(client_address(ip("10.0.0.2"), ["1.2.3.4", "203.0.113.5"], &proxy), "203.0.113.5");
        // Two trusted proxies in a row: the first hop that is not one of them.
        let proxies = [ip("10.0.0.2"), ip("10.0.0.3")];
        assert_eq!(client_address(ip("10.0.0.2"), ["9.9.9.9, 203.0.113.5, 10.0.0.3"], &proxies), "203.0.113.5");
        assert_eq!(client_address(ip("10.0.0.2"), ["2001:db8::1"], &proxy), "2001:db8::/64");
        // No header, or only proxies in it: the peer.
        assert_eq!(client_address(ip("10.0.0.2"), [], &proxy), "10.0.0.2");
        assert_eq!(client_address(ip("10.0.0.2"), ["10.0.0.2"], &proxy), "10.0.0.2");
        // Something else than an address is counted as it is, not as the proxy.
        assert_eq!(client_address(ip("10.0.0.2"), ["unknown"], &proxy), "unknown");
    }

    #[test]
    fn a_dual_stack_listener_still_knows_its_proxies() {
        // The proxy as an IPv6 listener on `[::]` sees it, trusted as configured (IPv4).
        let mapped = ip("::ffff:10.0.0.2");
        assert_eq!(client_address(mapped, ["203.0.113.5"], &[ip("10.0.0.2")]), "203.0.113.5");
        assert_eq!(client_address(ip("10.0.0.2"), ["::ffff:203.0.113.5"], &[mapped]), "203.0.113.5");
        // Untrusted, a mapped client is counted as the IPv4 address it is.
        assert_eq!(client_address(ip("::ffff:198.51.100.7"), [], &[]), "198.51.100.7");
    }

    #[test]
    fn an_ipv6_client_counts_by_its_64() {
        let one = client_address(ip("2001:db8:1:2:aaaa::1"), [], &[]);
        assert_eq!(one, "2001:db8:1:2::/64");
        assert_eq!(client_address(ip("2001:db8:1:2:ffff:1:2:3"), [], &[]), one, "same subscriber");
        assert_ne!(client_address(ip("2001:db8:1:3::1"), [], &[]), one, "the next /64");
        assert_eq!(client_address(ip("::1"), [], &[]), "::/64");
    }
}
