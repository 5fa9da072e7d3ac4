//! Property tests of the quota script's inputs, against a real Redis named by `KEYMETER_TEST_REDIS`
//! (e.g. `redis://127.0.0.1:56999`). Without it the tests fail: a skipped check would look green.
//!
//! Every case uses fresh random key ids, so cases and runs never see each other's counters, and
//! the keys are deleted afterwards.

use std::cell::RefCell;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use redis::Value;
use services::keys::quota_manager::{quota_redis_key, CHECK_SCRIPT as SCRIPT, RECONCILE_SCRIPT};
use services::keys::{ApiKeyId, Quota, QuotaDecision, QuotaLimit, QuotaManager, Window};
use services::redis_pool::{self, RedisConn, RedisPool};
use tokio::runtime::Runtime;
use uuid::Uuid;

const TEN_YEARS_MS: i64 = 3_653 * 86_400_000;
/// Keeps the whole file to a few seconds.
const CASES: u32 = 64;

fn redis_url() -> String {
    std::env::var("KEYMETER_TEST_REDIS").unwrap_or_else(|_| {
        panic!(
            "KEYMETER_TEST_REDIS is not set: these tests need a throwaway Redis, e.g. \
             `redis-server --port 56999 --save '' --appendonly no --daemonize yes` and \
             KEYMETER_TEST_REDIS=redis://127.0.0.1:56999"
        )
    })
}

/// One single-threaded runtime per test: the shared multiplexed connection's driver task lives
/// on it, so every case must run on the same one.
fn runtime_and_pool() -> (Runtime, RedisPool) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let url = redis_url();
    let pool = {
        let _in_runtime = rt.enter();
        redis_pool::pool(&url, 4).expect("Redis pool")
    };
    rt.block_on(redis_pool::ping(&redis_pool::SharedConnection::new(pool.clone())))
        .unwrap_or_else(|e| panic!("no Redis answers at {url}: {e}"));
    (rt, pool)
}

fn runner() -> TestRunner {
    TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() })
}

async fn delete(conn: &mut RedisConn, key: &str) {
    let _: i64 = redis::cmd("DEL").arg(key).query_async(conn).await.expect("DEL");
}

/// Milliseconds until `key` expires (-1: never, -2: no such key).
async fn pttl(conn: &mut RedisConn, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.expect("PTTL")
}

#[derive(Debug, Clone)]
struct Case {
    per_hour: i64,
    per_day: i64,
    /// 0: no burst limit.
    burst: i64,
    offset_ms: i64,
    version_ms: i64,
    calls: usize,
}

fn cases() -> impl Strategy<Value = Case> {
    // Small limits half the time, so that windows actually fill up within 50 calls.
    let limit = || prop_oneof![1..=60i64, 1..=QuotaLimit::MAX];
    (
        limit(),
        limit(),
        prop_oneof![Just(0), 1..=60i64, 0..=QuotaLimit::MAX_BURST],
        -TEN_YEARS_MS..=TEN_YEARS_MS,
        0..=4_000_000_000_000i64,
        1..=50usize,
    )
        .prop_map(|(per_hour, per_day, burst, offset_ms, version_ms, calls)| Case {
            per_hour,
            per_day,
            burst,
            offset_ms,
            version_ms,
            calls,
        })
}

/// `calls` sequential checks of one fresh key; every decision and the final count are checked.
async fn run_case(manager: &QuotaManager, conn: &mut RedisConn, case: &Case) -> Result<(), TestCaseError> {
    let key = ApiKeyId(Uuid::new_v4());
    let quota = Quota {
        per_hour: QuotaLimit::new(case.per_hour).expect("in range"),
        per_day: QuotaLimit::new(case.per_day).expect("in range"),
        burst_per_second: (case.burst > 0).then(|| QuotaLimit::burst(case.burst).expect("in range")),
    };
    manager.set_test_clock_offset_ms(case.offset_ms);
    let before_ms = manager.now_ms().await.map_err(|e| TestCaseError::fail(format!("TIME: {e}")))?;
    let mut decisions: Vec<QuotaDecision> = Vec::with_capacity(case.calls);
    for i in 0..case.calls {
        let d = manager
            .check_and_count(key, &quota, case.version_ms)
            .await
            .map_err(|e| TestCaseError::fail(format!("call {i} failed: {e}")))?;
        prop_assert_eq!((d.hour.limit, d.day.limit), (case.per_hour, case.per_day));
        prop_assert_eq!(d.burst_per_second, (case.burst > 0).then_some(case.burst));
        if d.admitted {
            prop_assert!(d.hour.used <= d.hour.limit && d.day.used <= d.day.limit, "call {}: {:?}", i, d);
            prop_assert!(d.hour.used >= 1 && d.day.used >= 1, "call {}: {:?}", i, d);
            prop_assert_eq!(d.blocked_by, None);
            prop_assert_eq!(d.retry_after_secs, None);
        } else {
            prop_assert!(d.retry_after_secs.is_some_and(|s| s >= 1), "call {}: {:?}", i, d);
            // The window named as the refusing one really is full.
            let full = match d.blocked_by {
                Some(Window::Hour) => d.hour.used >= d.hour.limit,
                Some(Window::Day) => d.day.used >= d.day.limit,
                // The burst refuses only with room in the hour and the day (else they are named),
                // only once a whole burst was admitted, and frees up within one emission
                // interval (at most a second): `Retry-After: 1`.
                Some(Window::Burst) => {
                    let admitted_before = decisions.iter().filter(|d| d.admitted).count() as i64;
                    case.burst > 0
                        && d.hour.used < d.hour.limit
                        && d.day.used < d.day.limit
                        && admitted_before >= case.burst
                        && d.retry_after_secs == Some(1)
                }
                None => false,
            };
            prop_assert!(full, "call {}: {:?}", i, d);
        }
        decisions.push(d);
    }
    let after_ms = manager.now_ms().await.map_err(|e| TestCaseError::fail(format!("TIME: {e}")))?;
    let kept_ms = pttl(conn, &quota_redis_key(key)).await;
    delete(conn, &quota_redis_key(key)).await;

    for d in &decisions {
        // The script ran on the shifted Redis clock, and the windows around it are the right ones.
        prop_assert!((before_ms..=after_ms).contains(&d.now_ms), "{} not in {}..={}", d.now_ms, before_ms, after_ms);
        prop_assert!(d.hour.reset_at_ms > d.now_ms && d.hour.reset_at_ms - d.now_ms <= 3_600_000);
        prop_assert!(d.day.reset_at_ms > d.now_ms && d.day.reset_at_ms - d.now_ms <= 86_400_000);
        prop_assert_eq!(d.hour.reset_at_ms % 3_600_000, 0);
        prop_assert_eq!(d.day.reset_at_ms % 86_400_000, 0);
    }
    // Counting is only comparable within one window; a case straddling a boundary (a few
    // milliseconds out of an hour) checks the per-decision properties only.
    let first = &decisions[0];
    if decisions
        .iter()
        .any(|d| d.hour.reset_at_ms != first.hour.reset_at_ms || d.day.reset_at_ms != first.day.reset_at_ms)
    {
        return Ok(());
    }
    // The key's state is kept a little past the day it counts (an hour), and no longer: a key
    // that goes quiet costs nothing. Set when the day's first request was admitted.
    let day_end_ms = first.day.reset_at_ms + 3_600_000;
    prop_assert!(
        (day_end_ms - after_ms - 1_000..=day_end_ms - first.now_ms).contains(&kept_ms),
        "kept {} ms at {}, first call at {}, day ends at {}",
        kept_ms,
        after_ms,
        first.now_ms,
        first.day.reset_at_ms
    );
    // Every decision replayed against the GCRA as specified, at the time the script saw: a
    // burst of `burst` at once, refilled one request per emission interval (1/burst s).
    let mut gcra = Gcra::new(case.burst);
    let mut admitted = 0;
    for (i, d) in decisions.iter().enumerate() {
        let windows_have_room = admitted < case.per_hour && admitted < case.per_day;
        let burst_has_room = gcra.has_room(d.now_ms);
        prop_assert_eq!(d.admitted, windows_have_room && burst_has_room, "call {}: {:?} of {:?}", i, d, case);
        if windows_have_room && !burst_has_room {
            prop_assert_eq!(d.blocked_by, Some(Window::Burst), "call {}: {:?}", i, d);
        }
        if d.admitted {
            gcra.admit(d.now_ms);
        }
        admitted += i64::from(d.admitted);
        // A refusal consumes nothing.
        prop_assert_eq!((d.hour.used, d.day.used), (admitted, admitted), "{:?}", d);
    }
    let cap = (case.calls as i64).min(case.per_hour).min(case.per_day);
    if case.burst == 0 || case.burst >= cap {
        // Sequential calls: exactly min(attempts, limits) are admitted.
        prop_assert_eq!(admitted, cap);
    }
    Ok(())
}

/// The burst limit as the design states it (GCRA), in exact whole numbers: times in
/// milliseconds × rate, so that one emission interval (1000 / rate ms) is exactly 1000.
struct Gcra {
    /// Requests per second; 0: no burst limit.
    rate: i128,
    /// The theoretical arrival time of the next request, if any was admitted.
    tat: Option<i128>,
}

impl Gcra {
    fn new(rate: i64) -> Self {
        Self { rate: rate.into(), tat: None }
    }

    /// A request at `now_ms` is admitted while it is at most `rate - 1` intervals early.
    fn has_room(&self, now_ms: i64) -> bool {
        let now = i128::from(now_ms) * self.rate;
        self.rate == 0 || self.tat.unwrap_or(now).max(now) - now <= 1000 * (self.rate - 1)
    }

    fn admit(&mut self, now_ms: i64) {
        let now = i128::from(now_ms) * self.rate;
        self.tat = Some(self.tat.unwrap_or(now).max(now) + 1000);
    }
}

#[test]
fn quota_manager_decisions_are_consistent_for_any_valid_quota_and_clock() {
    let (rt, pool) = runtime_and_pool();
    let manager = QuotaManager::new(pool.clone());
    // `TestRunner::run` takes an `Fn`: the one connection is lent to each case in turn.
    let conn = RefCell::new(rt.block_on(redis_pool::conn(&pool)).expect("Redis connection"));
    runner()
        .run(&cases(), |case| rt.block_on(run_case(&manager, &mut conn.borrow_mut(), &case)))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `calls` concurrent checks of one fresh key: they share script calls, and still exactly
/// `min(attempts, limits)` are admitted (no burst limit), each with its own use of the windows.
async fn run_concurrent_case(manager: &QuotaManager, conn: &mut RedisConn, case: &Case) -> Result<(), TestCaseError> {
    let key = ApiKeyId(Uuid::new_v4());
    let quota = Quota {
        per_hour: QuotaLimit::new(case.per_hour).expect("in range"),
        per_day: QuotaLimit::new(case.per_day).expect("in range"),
        burst_per_second: None,
    };
    manager.set_test_clock_offset_ms(case.offset_ms);
    let checks = (0..case.calls).map(|_| manager.check_and_count(key, &quota, case.version_ms));
    let decisions = futures_util::future::join_all(checks).await;
    delete(conn, &quota_redis_key(key)).await;
    let decisions: Vec<QuotaDecision> = decisions
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| TestCaseError::fail(format!("a check failed: {e}")))?;
    let first = &decisions[0];
    if decisions
        .iter()
        .any(|d| d.hour.reset_at_ms != first.hour.reset_at_ms || d.day.reset_at_ms != first.day.reset_at_ms)
    {
        return Ok(());
    }
    let cap = (case.calls as i64).min(case.per_hour).min(case.per_day);
    let mut uses: Vec<(i64, i64)> =
        decisions.iter().filter(|d| d.admitted).map(|d| (d.hour.used, d.day.used)).collect();
    uses.sort_unstable();
    let expected: Vec<(i64, i64)> = (1..=cap).map(|n| (n, n)).collect();
    prop_assert_eq!(uses, expected, "{:?}", case);
    for d in decisions.iter().filter(|d| !d.admitted) {
        prop_assert_eq!((d.hour.used, d.day.used), (cap, cap));
        prop_assert!(d.blocked_by.is_some() && d.retry_after_secs.is_some_and(|s| s >= 1), "{:?}", d);
    }
    Ok(())
}

#[test]
fn concurrent_checks_of_one_key_share_script_calls_and_stay_exact() {
    let (rt, pool) = runtime_and_pool();
    let manager = QuotaManager::new(pool.clone());
    let conn = RefCell::new(rt.block_on(redis_pool::conn(&pool)).expect("Redis connection"));
    runner()
        .run(&cases(), |case| rt.block_on(run_concurrent_case(&manager, &mut conn.borrow_mut(), &case)))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// What a caller other than `QuotaManager` might pass: non-numbers, negative, fractional, huge,
/// and non-finite numbers, mixed with ordinary small values so that one bad argument at a time
/// is common too.
fn script_arg() -> impl Strategy<Value = String> {
    let garbage = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        (-1_000_000i64..0).prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| v.to_string()),
        prop::sample::select(vec![
            "",
            " ",
            "abc",
            "nan",
            "-nan",
            "inf",
            "-inf",
            "1e400",
            "-1e400",
            "1e308",
            "1e30",
            "-1e30",
            "0.5",
            "-0.5",
            "0x10",
            "1e3",
            " 7 ",
            "9223372036854775808",
            "99999999999999999999999",
            "2147483648",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,12}",
    ];
    prop_oneof![(0..100i64).prop_map(|v| v.to_string()), garbage]
}

/// Up to four calls on one key (later calls see what earlier ones stored); mostly the five
/// arguments the script expects, sometimes fewer or more.
fn garbage_calls() -> impl Strategy<Value = Vec<Vec<String>>> {
    let args = prop_oneof![
        4 => prop::collection::vec(script_arg(), 5),
        1 => prop::collection::vec(script_arg(), 0..=7),
    ];
    prop::collection::vec(args, 1..=4)
}

async fn eval(conn: &mut RedisConn, script: &redis::Script, key: &str, args: &[String]) -> redis::RedisResult<Value> {
    let mut invocation = script.key(key);
    for a in args {
        invocation.arg(a);
    }
    invocation.invoke_async(conn).await
}

async fn run_garbage(conn: &mut RedisConn, script: &redis::Script, calls: &[Vec<String>]) -> Result<(), TestCaseError> {
    let key = format!("kmprop:{{{}}}:quota", Uuid::new_v4());
    for args in calls {
        match eval(conn, script, &key, args).await {
            Ok(value) => {
                // Decoded the way `QuotaManager` does it: an error would be fine, a panic is not.
                let decoded: redis::RedisResult<Vec<i64>> = redis::from_redis_value(&value);
                let r =
                    decoded.map_err(|e| TestCaseError::fail(format!("{args:?}: not a decision: {value:?}: {e}")))?;
                prop_assert_eq!(r.len(), 9, "{:?}: {:?}", args, r);
                let (admitted, mask) = (r[0], r[1]);
                prop_assert!((0..=7).contains(&mask), "{:?}: {:?}", args, r);
                if args.len() <= 5 {
                    // One request: admitted, or refused for a reason.
                    prop_assert!(admitted == 0 || admitted == 1, "{:?}: {:?}", args, r);
                    prop_assert_eq!(admitted == 1, mask == 0, "{:?}: {:?}", args, r);
                } else {
                    // A batch of at most 10,000: nothing refused means something admitted.
                    prop_assert!((0..=10_000).contains(&admitted), "{:?}: {:?}", args, r);
                    prop_assert!(mask != 0 || admitted >= 1, "{:?}: {:?}", args, r);
                }
            }
            Err(e) => {
                // The script may refuse bad input, but as an answer, not by breaking the connection.
                prop_assert!(!e.is_io_error() && !e.is_connection_dropped() && !e.is_timeout(), "{:?}: {}", args, e);
            }
        }
    }
    let pong: String = redis::cmd("PING").query_async(conn).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(pong, "PONG");
    delete(conn, &key).await;

    // The script still works for a well-formed call on the same connection.
    let fresh = format!("kmprop:{{{}}}:quota", Uuid::new_v4());
    let ok = ["10", "100", "0", "1", "0"].map(str::to_owned);
    let value = eval(conn, script, &fresh, &ok).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    let r: Vec<i64> = redis::from_redis_value(&value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&r[..4], &[1, 0, 1, 1]);
    delete(conn, &fresh).await;
    Ok(())
}

#[test]
fn garbage_script_arguments_get_an_answer_and_leave_the_connection_working() {
    let (rt, pool) = runtime_and_pool();
    let script = redis::Script::new(SCRIPT);
    // One connection for every case, to show that no answer leaves it broken.
    let conn = RefCell::new(rt.block_on(redis_pool::conn(&pool)).expect("Redis connection"));
    runner()
        .run(&garbage_calls(), |calls| rt.block_on(run_garbage(&mut conn.borrow_mut(), &script, &calls)))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A burst of `rate` requests arriving at once is admitted whole, whatever the rate: here as
/// separate script calls (as from several instances) run back to back in one transaction, so
/// that most land in the same millisecond; one more is refused. Time passing between them
/// could only admit more, never fewer.
#[test]
fn a_whole_burst_arriving_at_once_is_admitted_for_every_rate() {
    let (rt, pool) = runtime_and_pool();
    rt.block_on(async {
        let mut conn = redis_pool::conn(&pool).await.expect("Redis connection");
        let hash: String = redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT).query_async(&mut conn).await.expect("load");
        let mut short = Vec::new();
        for rate in 1..=64i64 {
            let key = format!("kmprop:{{{}}}:quota", Uuid::new_v4());
            let mut pipe = redis::pipe();
            pipe.atomic();
            for _ in 0..=rate {
                pipe.cmd("EVALSHA").arg(&hash).arg(1).arg(&key).arg(100_000).arg(1_000_000).arg(rate).arg(0).arg(0);
            }
            let replies: Vec<Vec<i64>> = pipe.query_async(&mut conn).await.expect("EVALSHA");
            delete(&mut conn, &key).await;
            let admitted: Vec<i64> = replies.iter().map(|r| r[0]).collect();
            // The one more is early unless a whole emission interval passed meanwhile.
            let early = (replies[rate as usize][4] - replies[0][4]) * rate < 1000;
            if admitted[..rate as usize].iter().any(|&a| a != 1) || (early && admitted[rate as usize] != 0) {
                let pattern: String = admitted.iter().map(|a| if *a == 1 { '+' } else { '-' }).collect();
                let elapsed_ms = replies[rate as usize][4] - replies[0][4];
                short.push(format!("{rate}/s: {pattern} in {elapsed_ms} ms"));
            }
        }
        assert!(short.is_empty(), "bursts not admitted whole (+ admitted, - refused): {short:#?}");
    });
}

/// A burst rate lowered between two calls: what the key used under the old rate (counted in
/// its units) frees up as that rate said, not as read in the new rate's units (100,000/s to 1/s
/// kept a key refused for ~97 s).
#[test]
fn a_lowered_burst_rate_frees_the_key_within_one_new_interval() {
    let (rt, pool) = runtime_and_pool();
    rt.block_on(async {
        let mut conn = redis_pool::conn(&pool).await.expect("Redis connection");
        let key = format!("kmprop:{{{}}}:quota", Uuid::new_v4());
        // (hour, day, burst rate, limits' version, clock offset ms, batch) -> the script's reply.
        let call = |rate: i64, version: i64, offset_ms: i64, batch: i64| {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(SCRIPT)
                .arg(1)
                .arg(&key)
                .arg(1_000_000)
                .arg(10_000_000)
                .arg(rate)
                .arg(version)
                .arg(offset_ms)
                .arg(batch);
            cmd
        };
        let fast: Vec<i64> = call(100_000, 1, 0, 99).query_async(&mut conn).await.expect("EVAL");
        assert_eq!(fast[0], 99, "{fast:?}");
        // Two seconds on, the rate is 1/s: a whole interval has passed since anything was used.
        let slow: Vec<i64> = call(1, 2, 2_000, 1).query_async(&mut conn).await.expect("EVAL");
        assert_eq!((slow[0], slow[1]), (1, 0), "admitted: {slow:?}");
        // The next one at once is refused by the burst, free again within one interval.
        let refused: Vec<i64> = call(1, 2, 2_000, 1).query_async(&mut conn).await.expect("EVAL");
        assert_eq!((refused[0], refused[1]), (0, 4), "{refused:?}");
        assert!((1..=1_000).contains(&refused[8]), "retry in {} ms", refused[8]);
        delete(&mut conn, &key).await;
    });
}

/// Limits published for a key already counting leave the expiry its count set alone (an idle
/// key's are tested in `server/tests/metering.rs`).
#[test]
fn published_limits_leave_a_counting_keys_expiry_alone() {
    let (rt, pool) = runtime_and_pool();
    let manager = QuotaManager::new(pool.clone());
    rt.block_on(async {
        let mut conn = redis_pool::conn(&pool).await.expect("Redis connection");
        let key = ApiKeyId(Uuid::new_v4());
        let quota = |per_hour| Quota {
            per_hour: QuotaLimit::new(per_hour).expect("in range"),
            per_day: QuotaLimit::new(1_000).expect("in range"),
            burst_per_second: None,
        };
        let counted = manager.check_and_count(key, &quota(10), 1).await.expect("check");
        assert!(counted.admitted);
        let kept_ms = pttl(&mut conn, &quota_redis_key(key)).await;
        manager.publish_limits(key, &quota(20), 2).await.expect("publish");
        let after_publish_ms = pttl(&mut conn, &quota_redis_key(key)).await;
        assert!(after_publish_ms <= kept_ms && kept_ms - after_publish_ms < 1_000, "{kept_ms} then {after_publish_ms}");
        delete(&mut conn, &quota_redis_key(key)).await;
    });
}

/// Redis' own time, in seconds, and the starts of its hour and day.
async fn redis_windows(conn: &mut RedisConn) -> (i64, i64) {
    let (secs, _): (i64, i64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    (secs - secs % 3_600, secs - secs % 86_400)
}

/// `RECONCILE_SCRIPT` with counts `(hour, day)` for windows starting at `(hour_s, day_s)`.
async fn reconcile(
    conn: &mut RedisConn,
    key: &str,
    (hour_s, hour): (i64, i64),
    (day_s, day): (i64, i64),
) -> (i64, i64) {
    let script = redis::Script::new(RECONCILE_SCRIPT);
    let mut invocation = script.key(key);
    invocation.arg(hour_s).arg(hour).arg(day_s).arg(day).arg(0);
    invocation.invoke_async(conn).await.expect("reconcile")
}

async fn fields(conn: &mut RedisConn, key: &str) -> Vec<Option<i64>> {
    redis::cmd("HMGET").arg(key).arg(vec!["hw", "hc", "dw", "dc"]).query_async(conn).await.expect("HMGET")
}

/// An outage's admissions of a key Redis holds no current window of (first used during the
/// outage, or used only the day before) start Redis' current windows, and keep the key as long
/// as a check would: past the end of the day, not an hour into it as the day before's expiry.
#[test]
fn outage_admissions_start_the_current_windows_and_keep_the_key_for_the_day() {
    let (rt, pool) = runtime_and_pool();
    rt.block_on(async {
        let mut conn = redis_pool::conn(&pool).await.expect("Redis connection");
        let (hour_s, day_s) = redis_windows(&mut conn).await;
        let (new, yesterdays) = (quota_redis_key(ApiKeyId(Uuid::new_v4())), quota_redis_key(ApiKeyId(Uuid::new_v4())));
        assert_eq!(reconcile(&mut conn, &new, (hour_s, 3), (day_s, 3)).await, (3, 3));
        assert_eq!(fields(&mut conn, &new).await, [Some(hour_s), Some(3), Some(day_s), Some(3)]);
        let until_day_end_ms = (day_s + 86_400) * 1000 - chrono::Utc::now().timestamp_millis();
        assert!(pttl(&mut conn, &new).await > until_day_end_ms, "kept past the day's end");

        // Counted the day before, kept until an hour into today.
        let _: () = redis::cmd("HSET")
            .arg(&yesterdays)
            .arg(vec![("hw", day_s - 3_600), ("hc", 5), ("dw", day_s - 86_400), ("dc", 40)])
            .query_async(&mut conn)
            .await
            .expect("HSET");
        let _: () = redis::cmd("PEXPIRE").arg(&yesterdays).arg(60_000).query_async(&mut conn).await.expect("PEXPIRE");
        assert_eq!(reconcile(&mut conn, &yesterdays, (hour_s, 2), (day_s, 2)).await, (2, 2));
        assert!(pttl(&mut conn, &yesterdays).await > until_day_end_ms, "kept for today's counts");
        // Counted into from then on.
        assert_eq!(reconcile(&mut conn, &yesterdays, (hour_s, 4), (day_s, 4)).await, (6, 6));
        delete(&mut conn, &new).await;
        delete(&mut conn, &yesterdays).await;
    });
}

/// Windows that are not Redis' current ones are not started (an outage that spanned the hour,
/// an app node's clock ahead of Redis'), and a give-back only corrects its own window.
#[test]
fn only_the_current_windows_are_started_and_give_backs_start_nothing() {
    let (rt, pool) = runtime_and_pool();
    rt.block_on(async {
        let mut conn = redis_pool::conn(&pool).await.expect("Redis connection");
        let (hour_s, day_s) = redis_windows(&mut conn).await;
        let key = quota_redis_key(ApiKeyId(Uuid::new_v4()));
        assert_eq!(reconcile(&mut conn, &key, (hour_s - 3_600, 3), (day_s, 3)).await, (-1, 3), "the past hour");
        assert_eq!(reconcile(&mut conn, &key, (hour_s + 3_600, 3), (day_s, 1)).await, (-1, 4), "an hour to come");
        assert_eq!(fields(&mut conn, &key).await, [None, None, Some(day_s), Some(4)]);
        assert_eq!(reconcile(&mut conn, &key, (hour_s, -2), (day_s - 86_400, -2)).await, (-1, -1));
        assert_eq!(reconcile(&mut conn, &key, (hour_s, 0), (day_s, -1)).await, (-1, 3));
        assert_eq!(fields(&mut conn, &key).await, [None, None, Some(day_s), Some(3)]);
        delete(&mut conn, &key).await;
    });
}
