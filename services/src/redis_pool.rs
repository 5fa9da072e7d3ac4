//! Redis: the connection pool shared by sessions throttling, quotas and live counters, on one
//! Redis server or on a Redis Cluster.
//!
//! On a cluster a command, script or pipeline may only touch keys of one hash slot. Everything
//! of one API key is hash-tagged (`km:{<key id>}:…`), so the quota script and the live counter
//! reads stay in one slot; pipelines that mix slots (the recorder's stream entry plus many keys'
//! counters, the login throttle's two counters) are split by [`Conn`], invisibly to callers.

use std::collections::HashMap;
use std::time::Duration;

use deadpool::managed::{self, Manager, Metrics, Object, Pool, PoolBuilder, RecycleResult};
use deadpool_redis::redis::aio::{ConnectionLike, MultiplexedConnection};
use deadpool_redis::redis::cluster::{ClusterClient, ClusterClientBuilder};
use deadpool_redis::redis::cluster_async::ClusterConnection;
use deadpool_redis::redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use deadpool_redis::redis::{self, Arg, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use deadpool_redis::Runtime;

use crate::{ServiceError, ServiceResult};

/// Connections to one Redis server or to the primaries of a Redis Cluster.
#[derive(Clone)]
pub enum RedisPool {
    Single(deadpool_redis::Pool),
    Cluster(Pool<ClusterManager>),
}

/// A connection taken from the pool, given back when dropped.
pub type RedisConn = Conn<deadpool_redis::Connection, Object<ClusterManager>>;
/// A connection shared by concurrent requests (see [`SharedConnection`]); cheap to clone.
pub type SharedConn = Conn<MultiplexedConnection, ClusterConnection>;

/// A connection to a single Redis or to a cluster; use it as any `redis::aio::ConnectionLike`.
#[derive(Clone)]
pub enum Conn<S, C> {
    Single(S),
    Cluster(C),
}

/// A pool for `redis_url`: a cluster when it lists several comma-separated seed nodes.
pub fn pool(redis_url: &str, max_size: usize) -> ServiceResult<RedisPool> {
    pool_with(redis_url, max_size, redis_url.contains(','))
}

/// A pool for `redis_url`, read as the comma-separated seed nodes of a Redis Cluster when
/// `cluster` is set (one seed is enough: the client discovers the others).
pub fn pool_with(redis_url: &str, max_size: usize, cluster: bool) -> ServiceResult<RedisPool> {
    let invalid = |e: &dyn std::fmt::Display| ServiceError::Internal(format!("invalid REDIS_URL: {e}"));
    if !cluster {
        if redis_url.contains(',') {
            return Err(invalid(&"several nodes are only allowed for a Redis Cluster"));
        }
        let builder = deadpool_redis::Config::from_url(redis_url).builder().map_err(|e| invalid(&e))?;
        return Ok(RedisPool::Single(build(builder, max_size)?));
    }
    let urls: Vec<String> = redis_url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect();
    let manager = ClusterManager::new(urls).map_err(|e| invalid(&e))?;
    Ok(RedisPool::Cluster(build(Pool::builder(manager), max_size)?))
}

/// Makes the connections of a cluster pool. deadpool-redis has one too, but with redis-rs'
/// retry defaults: a command for the slots of a primary that died is retried 16 times, with
/// waits of 1.3 s growing to minutes, and with one of three primaries killed a `GET` failed
/// only after 811 s. Callers without a timeout of their own (the usage writer, the sign-in
/// throttle) hung all that time. Here it fails within about 150 ms when the node refuses
/// connections (under 2 s when it is unreachable), as on a single Redis, and the caller's
/// own retry, log or fallback takes over.
///
/// No response timeout: redis-rs retries a command that timed out, and a retried quota script
/// or `XADD` that Redis had run, only slowly, would count twice. Callers on the request path
/// bound their wait themselves and let the command finish. (A connection that breaks after
/// Redis ran a command but before its answer arrived still gets it sent again, as any retrying
/// client would; redirections need the retries, so they are kept.)
pub struct ClusterManager {
    client: ClusterClient,
}

impl ClusterManager {
    /// Attempts after the first: enough to follow a MOVED or ASK redirection, or the new slot
    /// map after a failover, no more.
    const RETRIES: u32 = 2;

    fn new(urls: Vec<String>) -> RedisResult<Self> {
        let client = ClusterClientBuilder::new(urls)
            .retries(Self::RETRIES)
            // Waits (ms) drawn from 10..min(100, 25 × 2^n), n = 1, 2: below 50, then below 100.
            .min_retry_wait(10)
            .max_retry_wait(100)
            .retry_wait_formula(25, 2)
            // Per attempt to reach a node (1 s by default): nodes are on a LAN, and an
            // unreachable one (no refusal) must not hold a command for seconds.
            .connection_timeout(Duration::from_millis(500))
            .build()?;
        Ok(Self { client })
    }
}

impl Manager for ClusterManager {
    type Type = ClusterConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<ClusterConnection, RedisError> {
        self.client.get_async_connection().await
    }

    /// A PING that passes when any primary answers it ([`first_answer`]): the connection
    /// is fine while one does (it mends its links to the others itself). One random
    /// primary's PING, as before, was the dead or hung one's now and then: that checkout
    /// waited for it (the usage writer's events waited ~3.2 s with a primary hung, ~0.2 s
    /// otherwise), or threw a working connection away for a new one.
    async fn recycle(&self, conn: &mut ClusterConnection, _: &Metrics) -> RecycleResult<RedisError> {
        first_answer(conn, redis::pipe().cmd("PING")).await.map_err(managed::RecycleError::Backend)?;
        Ok(())
    }
}

/// `commands`' replies from the first primary to answer them, asked through slots spread
/// over the key space: that reaches several primaries, so a dead or hung one holds nothing
/// up; an error only if none answers. (A slot whose primary the client has no connection to
/// is re-dialled first, within the 500 ms connect timeout, then asked of another node.
/// redis-rs' own fan-out to every primary, `ResponsePolicy::OneSucceeded`, was measured to
/// stall with one primary hung.) An ask a hung primary got waits on its connection until it
/// answers, as a quota check for its keys would.
async fn first_answer(conn: &ClusterConnection, commands: &Pipeline) -> RedisResult<Vec<Value>> {
    // One slot of each primary in the layout `redis-cli --cluster create` makes of three.
    const SPREAD: [u16; 3] = [0, 5_461, 10_923];
    let asks = SPREAD.map(|slot| {
        let mut conn = conn.clone();
        let primary = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
        Box::pin(async move { conn.route_pipeline(commands, 0, commands.len(), primary).await })
    });
    Ok(futures_util::future::select_ok(asks).await?.0)
}

fn build<M: Manager, W: From<Object<M>>>(builder: PoolBuilder<M, W>, max_size: usize) -> ServiceResult<Pool<M, W>> {
    builder
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(2)))
        .create_timeout(Some(Duration::from_secs(2)))
        .recycle_timeout(Some(Duration::from_secs(2)))
        .build()
        .map_err(|e| ServiceError::Internal(format!("cannot build the Redis pool: {e}")))
}

pub async fn conn(pool: &RedisPool) -> ServiceResult<RedisConn> {
    Ok(match pool {
        RedisPool::Single(p) => Conn::Single(p.get().await?),
        RedisPool::Cluster(p) => Conn::Cluster(p.get().await?),
    })
}

/// How much of Redis answered a probe ([`reach`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The Redis server, or every primary of the cluster, and the cluster serves every slot.
    Whole,
    /// A cluster that serves commands, but not every slot from here: a primary does not
    /// answer (dead, hung, or unreachable from this instance), or slots have no working primary.
    /// Keys in the other slots work.
    Part,
}

/// A write that nothing reads (`key` expires within a second): whether Redis takes writes, as
/// quota checks and usage hand-offs need. A Redis that answers reads may refuse them: `OOM` at
/// its `maxmemory`, `MISCONF` after a failed save, `READONLY` on a replica.
pub fn probe_write(key: &str) -> Cmd {
    redis::cmd("SET").arg(key).arg(1).arg("PX").arg(1_000).clone()
}

/// Whether Redis takes writes ([`probe_write`]), and on a cluster whether all of it does,
/// within `limit`. An error when nothing answers, writes are refused, or the cluster refuses
/// commands (`cluster_state` other than `ok`: it still answers `PING`, which names no key).
///
/// On a cluster it asks through `shared`, the long-lived connection quota checks use: a new
/// cluster connection waits for every node while it is made (~1 s with one hung), longer
/// than a readiness probe may take.
pub async fn reach(shared: &SharedConnection, limit: Duration) -> ServiceResult<Reach> {
    let deadline = tokio::time::Instant::now() + limit;
    let in_time =
        |e: tokio::time::error::Elapsed| ServiceError::RedisUnavailable(format!("no answer within {limit:?}: {e}"));
    if let RedisPool::Single(p) = shared.pool() {
        let write = async {
            let _: () = probe_write("km:probe").query_async(&mut p.get().await?).await?;
            ServiceResult::Ok(Reach::Whole)
        };
        return tokio::time::timeout_at(deadline, write).await.map_err(in_time)?;
    }
    // Made in a task of its own: if making it outlasts this probe, the next one finds it.
    let made = tokio::spawn({
        let shared = shared.clone();
        async move { shared.get().await }
    });
    let made = tokio::time::timeout_at(deadline, made).await.map_err(in_time)?;
    let Conn::Cluster(conn) =
        made.map_err(|e| ServiceError::Internal(format!("making a connection failed: {e}")))??
    else {
        return Err(ServiceError::Internal("a cluster pool gave a single-server connection".into()));
    };
    let mut ask = redis::pipe();
    ask.cmd("CLUSTER").arg("INFO").cmd("CLUSTER").arg("SLOTS");
    // The first primary to answer says whether the cluster serves commands, and which
    // primaries serve which slots.
    let answer = tokio::time::timeout_at(deadline, first_answer(&conn, &ask)).await.map_err(in_time)??;
    let [info, slots] = <[Value; 2]>::try_from(answer)
        .map_err(|_| ServiceError::RedisUnavailable("an odd answer to CLUSTER INFO and SLOTS".into()))?;
    let info: String = redis::from_redis_value(&info)?;
    if let Some(state) = cluster_state_not_ok(&info) {
        return Err(ServiceError::RedisUnavailable(format!("the Redis Cluster reports cluster_state:{state}")));
    }
    // Each primary through a write to a key in its slots, as the quota checks reach it: a PING
    // goes only to the primaries the client is connected to, which leaves out a dead one.
    let Some(keys) = key_on_each_primary(&slots) else { return Ok(Reach::Part) };
    let answers = futures_util::future::join_all(keys.iter().map(|key| {
        let mut conn = conn.clone();
        async move { tokio::time::timeout_at(deadline, probe_write(key).query_async::<()>(&mut conn)).await }
    }))
    .await;
    let every_primary = answers.iter().all(|answer| matches!(answer, Ok(Ok(_))));
    Ok(if every_primary && every_slot_ok(&info) { Reach::Whole } else { Reach::Part })
}

/// A key in the slots of each primary of a `CLUSTER SLOTS` reply
/// (`[[first, last, [host, port, node id, …], replicas…], …]`); primaries are told apart by
/// node id (hosts may be empty, `?` or null). `None` when a range cannot be read, or no
/// primary is listed: nothing then says every primary answers.
fn key_on_each_primary(slots: &Value) -> Option<Vec<String>> {
    let Value::Array(ranges) = slots else { return None };
    let mut first_slots: HashMap<String, u16> = HashMap::new();
    for range in ranges {
        let Value::Array(fields) = range else { return None };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(primary))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return None;
        };
        let (first, last) = (u16::try_from(*first).ok()?, u16::try_from(*last).ok()?);
        if first > last || last >= SLOTS {
            return None;
        }
        let id: String = redis::from_redis_value(primary.get(2)?).ok()?;
        first_slots.entry(id).or_insert(first);
    }
    if first_slots.is_empty() {
        return None;
    }
    Some(first_slots.into_values().map(|slot| format!("km:probe:{{{}}}", tag_in_slot(slot))).collect())
}

/// The hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// A number whose decimal digits, as a hash tag, fall in `slot` (a table made once).
fn tag_in_slot(slot: u16) -> u32 {
    static TAGS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; usize::from(SLOTS)];
        let mut missing = tags.len();
        // Every slot is hit after ~170,000 numbers.
        for n in 0u32.. {
            let tag = &mut tags[usize::from(hash_slot(n.to_string().as_bytes()))];
            if *tag == u32::MAX {
                *tag = n;
                missing -= 1;
                if missing == 0 {
                    break;
                }
            }
        }
        tags
    });
    tags[usize::from(slot % SLOTS)]
}

/// Round trip to all of Redis: [`reach`] is [`Reach::Whole`].
pub async fn ping(shared: &SharedConnection) -> ServiceResult<()> {
    match reach(shared, PING_WITHIN).await? {
        Reach::Whole => Ok(()),
        Reach::Part => Err(ServiceError::RedisUnavailable("a part of the Redis Cluster does not answer".into())),
    }
}

/// How long [`ping`] waits: a pool would otherwise wait up to its own timeouts.
const PING_WITHIN: Duration = Duration::from_secs(2);

/// Whether a `CLUSTER INFO` reply counts every slot as assigned and served by a working primary.
fn every_slot_ok(info: &str) -> bool {
    info_field(info, "cluster_slots_ok").and_then(|n| n.parse::<u16>().ok()) == Some(SLOTS)
}

/// A field of an `INFO`-style reply (`name:value` lines).
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| line.trim().strip_prefix(name)?.strip_prefix(':'))
}

/// The `cluster_state` of a `CLUSTER INFO` reply, unless it is `ok`.
fn cluster_state_not_ok(info: &str) -> Option<&str> {
    let state = info_field(info, "cluster_state").unwrap_or("unknown");
    (state != "ok").then_some(state)
}

/// The cluster connection behind a pooled or a shared handle.
pub trait AsClusterConnection: Send {
    fn cluster(&mut self) -> &mut ClusterConnection;
}

impl AsClusterConnection for ClusterConnection {
    fn cluster(&mut self) -> &mut ClusterConnection {
        self
    }
}

impl AsClusterConnection for Object<ClusterManager> {
    fn cluster(&mut self) -> &mut ClusterConnection {
        self
    }
}

impl<S: ConnectionLike + Send, C: AsClusterConnection> ConnectionLike for Conn<S, C> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.cluster().req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipe: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipe, offset, count),
            Self::Cluster(c) => Box::pin(cluster_pipeline(c.cluster().clone(), pipe, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}

/// redis-rs refuses a pipeline whose keys span hash slots (`CrossSlot`, before sending
/// anything). A plain (non-MULTI) pipeline promises no atomicity, so it is then sent as one
/// sub-pipeline per hash tag, concurrently, and the replies are put back in order. Commands
/// on one key keep their order (an `EXPIRE` must follow the `INCR` that creates the key).
async fn cluster_pipeline(
    mut conn: ClusterConnection,
    pipe: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    let first = conn.req_packed_commands(pipe, offset, count).await;
    let splittable = !pipe.is_transaction() && offset == 0 && count == pipe.len();
    if !(splittable && matches!(&first, Err(e) if e.kind() == ErrorKind::CrossSlot)) {
        return first;
    }
    // Grouped by the hash tag of each command's key; a group that still spans slots fails as
    // the whole pipeline did.
    let mut groups: HashMap<&[u8], (Pipeline, Vec<usize>)> = HashMap::new();
    for (i, cmd) in pipe.cmd_iter().enumerate() {
        let key = first_key(cmd).map(hash_tag).unwrap_or_default();
        let (sub, positions) = groups.entry(key).or_insert_with(|| (redis::pipe(), Vec::new()));
        sub.add_command(cmd.clone());
        positions.push(i);
    }
    let replies = futures_util::future::try_join_all(groups.values().map(|(sub, _)| {
        let mut conn = conn.clone();
        async move { conn.req_packed_commands(sub, 0, sub.len()).await }
    }))
    .await?;
    let mut values = vec![Value::Nil; pipe.len()];
    for ((_, positions), group_values) in groups.values().zip(replies) {
        for (i, value) in positions.iter().zip(group_values) {
            values[*i] = value;
        }
    }
    Ok(values)
}

/// The first key of a command as keymeter sends them: the first argument, but for scripts
/// (`EVAL script numkeys key…`), whose first key follows the key count (none: no key).
fn first_key(cmd: &redis::Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().filter_map(|arg| match arg {
        Arg::Simple(bytes) => Some(bytes),
        Arg::Cursor => None,
    });
    let name = args.next()?;
    let scripted = [&b"EVAL"[..], b"EVALSHA", b"EVAL_RO", b"EVALSHA_RO", b"FCALL", b"FCALL_RO"];
    if scripted.iter().any(|s| name.eq_ignore_ascii_case(s)) {
        let _script = args.next()?;
        let keys: usize = std::str::from_utf8(args.next()?).ok()?.parse().ok()?;
        return if keys == 0 { None } else { args.next() };
    }
    args.next()
}

/// A key's Redis Cluster hash slot.
pub fn hash_slot(key: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(hash_tag(key)) % SLOTS
}

/// The part of a key that decides its hash slot: the first non-empty `{…}`, else the key.
fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else { return key };
    match key[open + 1..].iter().position(|&b| b == b'}') {
        Some(len) if len > 0 => &key[open + 1..open + 1 + len],
        _ => key,
    }
}

/// One multiplexed connection shared by every request on the hot path. Taking a connection
/// from the pool costs a round trip (deadpool-redis pings on recycle); a multiplexed connection
/// carries concurrent commands without that (a cluster connection is multiplexed per node).
/// Replaced after an error that may have broken it (see [`SharedConnection::reset`]).
#[derive(Clone)]
pub struct SharedConnection {
    pool: RedisPool,
    conn: std::sync::Arc<std::sync::RwLock<Option<SharedConn>>>,
}

impl SharedConnection {
    pub fn new(pool: RedisPool) -> Self {
        Self { pool, conn: Default::default() }
    }

    /// The pool it takes its connection from.
    pub fn pool(&self) -> &RedisPool {
        &self.pool
    }

    pub async fn get(&self) -> ServiceResult<SharedConn> {
        if let Some(conn) = self.conn.read().ok().and_then(|c| c.clone()) {
            return Ok(conn);
        }
        let conn = match conn(&self.pool).await? {
            Conn::Single(c) => Conn::Single(deadpool_redis::Connection::take(c)),
            Conn::Cluster(c) => Conn::Cluster(Object::take(c)),
        };
        if let Ok(mut slot) = self.conn.write() {
            *slot = Some(conn.clone());
        }
        Ok(conn)
    }

    /// Whether Redis carries out `cmd` within `timeout`, else why not: how a component that saw
    /// Redis fail finds out, beside its own work, that it may use it again. A connection that
    /// did not answer is replaced, as after a command that timed out.
    pub async fn answers(&self, cmd: &Cmd, timeout: Duration) -> Result<(), String> {
        let answered = tokio::time::timeout(timeout, async {
            let mut conn = self.get().await.map_err(|e| e.to_string())?;
            let reply: RedisResult<Value> = cmd.query_async(&mut conn).await;
            reply.map(drop).map_err(|e| {
                self.reset_after(&e);
                e.to_string()
            })
        })
        .await;
        answered.unwrap_or_else(|_| {
            self.reset();
            Err("timed out".to_owned())
        })
    }

    /// Call after an error that may have broken the connection; the next `get` opens another.
    pub fn reset_after(&self, err: &redis::RedisError) {
        if err.is_io_error() || err.is_connection_dropped() || err.is_timeout() {
            self.reset();
        }
    }

    /// Drops the shared connection after a timeout (it may be stuck behind a reply that never
    /// comes); the next `get` opens another. Not on a cluster: the client mends its connection
    /// after refused or dropped connections itself (even after every node restarted), and a
    /// new one waits for every node while it is made. Measured with one of three primaries
    /// stopped (SIGSTOP) under load: kept, the other primaries' keys stayed exact and answered
    /// within the check's timeout; replaced after timeouts (even off the request path), keys
    /// of every primary fell back and waited up to 1 s. The cost: a primary that hangs without
    /// closing its connections keeps its slots on this connection, even after a replica took
    /// over, until it answers or its connections break; only its keys fall back meanwhile.
    pub fn reset(&self) {
        if matches!(self.pool, RedisPool::Cluster(_)) {
            return;
        }
        if let Ok(mut slot) = self.conn.write() {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_follow_redis_rules() {
        assert_eq!(hash_tag(b"km:{abc}:quota"), b"abc");
        assert_eq!(hash_tag(b"km:{abc}:live:60"), b"abc");
        assert_eq!(hash_tag(b"km:usage:events"), b"km:usage:events");
        // An empty or unclosed tag does not count: the whole key decides.
        assert_eq!(hash_tag(b"a{}b"), b"a{}b");
        assert_eq!(hash_tag(b"a{b"), b"a{b");
        assert_eq!(hash_tag(b"{x}{y}"), b"x");
    }

    #[test]
    fn script_keys_follow_their_key_count() {
        let key = |cmd: &redis::Cmd| first_key(cmd).map(|k| String::from_utf8_lossy(k).into_owned());
        assert_eq!(key(redis::cmd("INCR").arg("km:{a}:x")).as_deref(), Some("km:{a}:x"));
        assert_eq!(key(redis::cmd("EVAL").arg("return 1").arg(1).arg("km:{a}:x").arg(5)).as_deref(), Some("km:{a}:x"));
        assert_eq!(key(redis::cmd("evalsha").arg("abc").arg(2).arg("k1").arg("k2")).as_deref(), Some("k1"));
        assert_eq!(key(redis::cmd("EVAL").arg("return 1").arg(0).arg("not-a-key")), None);
        assert_eq!(key(redis::cmd("EVAL").arg("return 1").arg("many")), None);
        assert_eq!(key(&redis::cmd("TIME")), None);
    }

    #[test]
    fn a_cluster_is_up_only_when_it_says_so() {
        assert_eq!(
            cluster_state_not_ok("cluster_enabled:1\r\ncluster_state:ok\r\ncluster_slots_assigned:16384\r\n"),
            None
        );
        assert_eq!(cluster_state_not_ok("cluster_state:fail\r\n"), Some("fail"));
        assert_eq!(cluster_state_not_ok(""), Some("unknown"));
    }

    #[test]
    fn each_primary_gets_a_key_in_its_slots() {
        let node = |host: Value, port, id: &str| {
            Value::Array(vec![host, Value::Int(port), Value::BulkString(id.as_bytes().to_vec())])
        };
        let host = || Value::BulkString(b"10.0.0.1".to_vec());
        let range = |first, last, primary| Value::Array(vec![Value::Int(first), Value::Int(last), primary]);
        // Two primaries told apart by id though they show the same (unknown) endpoint, one of
        // them with two ranges, the other with a single slot.
        let slots = Value::Array(vec![
            range(0, 5460, node(Value::Nil, 6379, "a")),
            range(5461, 5461, node(Value::Nil, 6379, "b")),
            range(5462, 16383, node(Value::Nil, 6379, "a")),
        ]);
        let keys = key_on_each_primary(&slots).expect("keys");
        let mut slots_of_keys: Vec<u16> = keys.iter().map(|key| hash_slot(key.as_bytes())).collect();
        slots_of_keys.sort_unstable();
        assert_eq!(slots_of_keys, [0, 5461]);
        // Anything unreadable says nothing about every primary.
        assert_eq!(key_on_each_primary(&Value::Array(Vec::new())), None);
        assert_eq!(key_on_each_primary(&Value::Nil), None);
        assert_eq!(key_on_each_primary(&Value::Array(vec![range(10, 5, node(host(), 1, "a"))])), None);
        assert_eq!(key_on_each_primary(&Value::Array(vec![range(0, 16_384, node(host(), 1, "a"))])), None);
        let no_id = Value::Array(vec![host(), Value::Int(1)]);
        assert_eq!(key_on_each_primary(&Value::Array(vec![range(0, 16_383, no_id)])), None);
    }

    #[test]
    fn every_slot_has_a_probe_tag() {
        for slot in [0, 1, 5_461, 12_345, 16_383] {
            assert_eq!(hash_slot(tag_in_slot(slot).to_string().as_bytes()), slot);
        }
    }

    #[test]
    fn a_cluster_is_whole_only_while_every_slot_is_served() {
        let info = |ok| format!("cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:{ok}\r\n");
        assert!(every_slot_ok(&info(16_384)));
        assert!(!every_slot_ok(&info(10_923)), "a primary's slots failing");
        // `cluster_slots_ok_x` is not the field, and a reply without it says nothing.
        assert!(!every_slot_ok("cluster_slots_ok_x:16384\r\n"));
        assert!(!every_slot_ok("cluster_state:ok\r\n"));
    }

    #[test]
    fn several_urls_need_cluster_mode() {
        assert!(pool_with("redis://127.0.0.1:1,redis://127.0.0.1:2", 1, false).is_err());
        assert!(matches!(pool("redis://127.0.0.1:1", 1), Ok(RedisPool::Single(_))));
        assert!(matches!(pool("redis://127.0.0.1:1, redis://127.0.0.1:2", 1), Ok(RedisPool::Cluster(_))));
        assert!(matches!(pool_with("redis://127.0.0.1:1", 1, true), Ok(RedisPool::Cluster(_))));
    }
}
