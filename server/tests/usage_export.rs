//! CSV exports are streamed: rollups are read a piece at a time through a cursor and written
//! out as they come, with exactly the bytes the in-memory export gave; an export that cannot
//! finish ends in a broken download, and one whose client stops reading lets go of its
//! database connection.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use common::{client, TestApp};
use diesel::sql_types::{Array, BigInt, Integer, Jsonb, SmallInt, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, RunQueryDsl};
use futures_util::StreamExt;
use reqwest::StatusCode;
use services::accounts::{sessions, Role};
use services::keys::{api_keys, KeyName};
use services::usage::export::{self, CsvStream, ExportKey, ExportSpec, Pace};
use services::usage::periods::{DayRange, Granularity};
use services::usage::rollups::RollupRows;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const GRANULARITIES: [Granularity; 4] = [Granularity::Hour, Granularity::Day, Granularity::Week, Granularity::Month];

/// Endpoints whose order differs between byte order (the export's) and a natural-language
/// collation: upper before lower case, `get` after `GET`, a non-ASCII letter; and one that
/// needs CSV quoting.
const ENDPOINTS: [(&str, &str); 9] = [
    ("GET", "/api/v1/ping"),
    ("get", "/api/v1/ping"),
    ("POST", "/api/v1/echo"),
    ("GET", "/api/v1/status/{code}"),
    ("GET", "/api/v1/Zeta"),
    ("GET", "/api/v1/alpha"),
    ("DELETE", "/api/v1/alpha"),
    ("GET", "/api/v1/é"),
    ("GET", "/api/v1/say \"hi\", twice"),
];

/// A small deterministic generator, so that a failure can be reproduced.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[derive(Default)]
struct Rollups {
    key: Vec<Uuid>,
    at: Vec<DateTime<Utc>>,
    method: Vec<String>,
    endpoint: Vec<String>,
    status: Vec<i16>,
    requests: Vec<i64>,
    throttled: Vec<i64>,
    bytes_in: Vec<i64>,
    bytes_out: Vec<i64>,
    hist: Vec<serde_json::Value>,
}

/// Writes hourly rollups straight into the table the exports read, in one statement.
async fn insert(app: &TestApp, r: &Rollups) {
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    diesel::sql_query(
        "INSERT INTO api_key_usage_hour (api_key_id, period_start, method, endpoint, status, requests, throttled, \
         bytes_in, bytes_out, latency_hist) SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind::<Array<SqlUuid>, _>(&r.key)
    .bind::<Array<Timestamptz>, _>(&r.at)
    .bind::<Array<Text>, _>(&r.method)
    .bind::<Array<Text>, _>(&r.endpoint)
    .bind::<Array<SmallInt>, _>(&r.status)
    .bind::<Array<BigInt>, _>(&r.requests)
    .bind::<Array<BigInt>, _>(&r.throttled)
    .bind::<Array<BigInt>, _>(&r.bytes_in)
    .bind::<Array<BigInt>, _>(&r.bytes_out)
    .bind::<Array<Jsonb>, _>(&r.hist)
    .execute(&mut conn)
    .await
    .unwrap();
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap())
}

/// Sparse traffic of some keys over `days` days from `first`: random hours, endpoints and
/// statuses, latencies spread over a few histogram buckets.
fn traffic(keys: &[Uuid], first: NaiveDate, days: i64, seed: u64) -> Rollups {
    let mut rng = Lcg(seed);
    let mut r = Rollups::default();
    for &key in keys {
        for hour in 0..days * 24 {
            if rng.below(3) != 0 {
                continue;
            }
            let at = midnight(first) + chrono::Duration::hours(hour);
            for (method, endpoint) in ENDPOINTS {
                if rng.below(2) != 0 {
                    continue;
                }
                for status in [200i16, 404, 500, 429] {
                    if rng.below(3) != 0 {
                        continue;
                    }
                    let n = 1 + rng.below(40) as i64;
                    let mut hist = serde_json::Map::new();
                    let mut left = n;
                    while left > 0 {
                        let c = 1 + rng.below(left as u64) as i64;
                        let bucket = 300 + rng.below(120);
                        let before = hist.get(&bucket.to_string()).and_then(|v| v.as_i64()).unwrap_or(0);
                        hist.insert(bucket.to_string(), (before + c).into());
                        left -= c;
                    }
                    r.key.push(key);
                    r.at.push(at);
                    r.method.push(method.to_owned());
                    r.endpoint.push(endpoint.to_owned());
                    r.status.push(status);
                    let throttled = status == 429;
                    r.requests.push(if throttled { 0 } else { n });
                    r.throttled.push(if throttled { n } else { 0 });
                    r.bytes_in.push(n * rng.below(100) as i64);
                    r.bytes_out.push(n * 42);
                    r.hist.push(serde_json::Value::Object(hist));
                }
            }
        }
    }
    r
}

/// The export as built in memory from the rollups (the reference the stream must equal); with
/// the owner column as the admins' export has it when `with_owner`.
async fn in_memory_csv(
    app: &TestApp,
    keys: &[ExportKey],
    granularity: Granularity,
    range: DayRange,
    with_owner: bool,
) -> String {
    let mut loaded = Vec::new();
    for key in keys {
        loaded.push((key.id, RollupRows::hours(&app.services.db, key.id, range).await.unwrap()));
    }
    let rows = export::rows_of(loaded.iter().map(|(id, hours)| (*id, hours)), granularity, range);
    let keys: HashMap<Uuid, &ExportKey> = keys.iter().map(|k| (k.id, k)).collect();
    let mut out = if with_owner { export::HEADER_WITH_OWNER } else { export::HEADER }.to_owned();
    for row in &rows {
        let key = keys[&row.key_id];
        let owner = with_owner.then(|| key.owner_email.as_deref().unwrap_or_default());
        export::write_row(&mut out, row, &key.name, owner);
    }
    out
}

/// An export of `keys` as a merchant's (no owner column).
fn spec(keys: &[ExportKey], granularity: Granularity, range: DayRange) -> ExportSpec {
    ExportSpec { keys: keys.to_vec(), granularity, range, with_owner: false }
}

/// The whole stream and its chunks.
async fn streamed(app: &TestApp, spec: ExportSpec, piece_rows: usize) -> (String, Vec<String>) {
    let pace = Pace { piece_rows, ..Pace::default() };
    let mut stream =
        CsvStream::start(&app.services.db, app.services.exports.take(0).await.unwrap(), spec, pace).await.unwrap();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk.unwrap());
    }
    (chunks.concat(), chunks)
}

struct Dataset {
    app: TestApp,
    /// Every key with its name and owner, in creation order.
    keys: Vec<ExportKey>,
    range: DayRange,
}

/// Three keys of one merchant with traffic from 2026-01-20 to 2026-03-05 (two month ends,
/// several ISO weeks), a few thousand hourly rollups in all.
async fn dataset() -> Dataset {
    dataset_in(TestApp::spawn().await).await
}

async fn dataset_in(app: TestApp) -> Dataset {
    let owner = app.user("ann@example.com", Role::Merchant).await;
    let mut keys = Vec::new();
    for name in ["Checkout, \"EU\"", "=HYPERLINK()", "batch"] {
        let (key, _) = api_keys::create(&app.services.db, owner.id, &KeyName::parse(name).unwrap()).await.unwrap();
        keys.push(ExportKey { id: key.id.0, name: key.name, owner_email: Some(owner.email.clone()) });
    }
    let first = NaiveDate::from_ymd_opt(2026, 1, 20).unwrap();
    let ids: Vec<Uuid> = keys.iter().map(|k| k.id).collect();
    let rollups = traffic(&ids, first, 45, 7);
    assert!(rollups.key.len() > 3_000, "{} rollups", rollups.key.len());
    insert(&app, &rollups).await;
    let range = DayRange::new(first, NaiveDate::from_ymd_opt(2026, 3, 5).unwrap()).unwrap();
    Dataset { app, keys, range }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_exports_are_byte_for_byte_the_in_memory_ones_whatever_the_piece_size() {
    let Dataset { app, keys, range } = dataset().await;
    // A range starting mid-week and mid-month: its first week and month rows are partial.
    let ranges = [range, DayRange::new(range.from.succ_opt().unwrap(), range.to).unwrap()];
    for granularity in GRANULARITIES {
        for range in ranges {
            let expected = in_memory_csv(&app, &keys, granularity, range, false).await;
            assert!(expected.lines().count() > 30, "{granularity:?}: {expected}");
            // No row claims days before the range: a partial first period starts with it.
            let starts: Vec<&str> = expected.lines().skip(1).filter_map(|l| l.split(',').next()).collect();
            let first = range.start().format("%Y-%m-%dT%H:%M:%SZ").to_string();
            assert!(starts.iter().all(|s| *s >= first.as_str()), "{granularity:?}, {range:?}: {starts:?}");
            if matches!(granularity, Granularity::Week | Granularity::Month) {
                assert!(starts.contains(&first.as_str()), "{granularity:?}, {range:?}: no row from {first}");
            }
            // Pieces of 7 rollups fall inside the hours of one week's or month's row over
            // and over; one big piece is the whole export at once.
            for piece_rows in [7, 100_000] {
                let spec = spec(&keys, granularity, range);
                let (csv, chunks) = streamed(&app, spec, piece_rows).await;
                assert!(csv == expected, "{granularity:?}, {range:?}, pieces of {piece_rows}: the CSV differs");
                if piece_rows == 7 {
                    // Each key's every period has more than 7 rollups here, so each comes in
                    // a chunk of its own: 3 keys by 3 months at the least.
                    assert!(chunks.len() >= 9, "{granularity:?}: {} chunks", chunks.len());
                    // A piece finishes at most the rows of the period it carried over (one
                    // per endpoint) and as many more as it has rollups (plus the header in
                    // the first): the export holds no more than that.
                    for (i, chunk) in chunks.iter().enumerate() {
                        let most = ENDPOINTS.len() + 7 + usize::from(i == 0);
                        assert!(chunk.matches("\r\n").count() <= most, "{chunk}");
                    }
                }
            }
        }
        // One key alone, pieces of one rollup each.
        let spec = spec(&keys[..1], granularity, range);
        let (csv, _) = streamed(&app, spec, 1).await;
        assert!(csv == in_memory_csv(&app, &keys[..1], granularity, range, false).await, "{granularity:?}: one key");
    }

    // The same bytes over HTTP: the merchant's export of one key, the admin's of all.
    let session = app.signed_in("ann@example.com").await;
    for granularity in GRANULARITIES {
        let key = &keys[0].id;
        let res = session
            .get(app.url(&format!("/dashboard/developers/api-keys/{key}/usage.csv")))
            .query(&[("from", range.from.to_string()), ("to", range.to.to_string())])
            .query(&[("granularity", granularity.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let csv = res.text().await.unwrap();
        assert!(csv == in_memory_csv(&app, &keys[..1], granularity, range, false).await, "{granularity:?} over HTTP");
    }
    app.user("root@example.com", Role::Admin).await;
    let root = app.signed_in("root@example.com").await;
    let res = root.get(app.url("/admin/usage.csv?month=2026-02")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let february = DayRange::parse("2026-02-01", "2026-02-28").unwrap();
    let csv = res.text().await.unwrap();
    assert!(csv == in_memory_csv(&app, &keys, Granularity::Day, february, true).await, "admin export");
}

#[derive(diesel::QueryableByName)]
struct Flag {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    flag: bool,
}

/// Production databases often compare text by a language's rules (`alpha` before `Zeta`, `get`
/// before `GET`), unlike the test template's; the export keeps byte order on those too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_keep_byte_order_on_a_database_that_sorts_text_by_language() {
    let pg = common::env("KEYMETER_TEST_PG");
    let name = format!("test_icu_{}", Uuid::new_v4().simple());
    let mut admin = diesel_async::AsyncPgConnection::establish(&format!("{pg}/postgres")).await.unwrap();
    diesel::sql_query(format!(
        "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C' \
         LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
    ))
    .execute(&mut admin)
    .await
    .expect("a database with an ICU collation (PostgreSQL 15+ built with ICU)");
    let url = format!("{pg}/{name}");
    services::db::run_migrations(&url).await.unwrap();
    let Dataset { app, keys, range } = dataset_in(TestApp::spawn_with(&[("DATABASE_URL", url)]).await).await;
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    let language_order: Flag =
        diesel::sql_query("SELECT 'alpha' < 'Zeta' AS flag").get_result(&mut conn).await.unwrap();
    assert!(language_order.flag, "the database should sort text by language");
    for granularity in GRANULARITIES {
        let spec = spec(&keys, granularity, range);
        let (csv, _) = streamed(&app, spec, 7).await;
        assert!(csv == in_memory_csv(&app, &keys, granularity, range, false).await, "{granularity:?}: the CSV differs");
    }
}

#[derive(diesel::QueryableByName)]
struct Pid {
    #[diesel(sql_type = Integer)]
    pid: i32,
}

/// Sessions of this test's database reading an export's cursor and waiting between pieces.
async fn exports_waiting(app: &TestApp) -> Vec<i32> {
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    let rows: Vec<Pid> = diesel::sql_query(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
         AND state = 'idle in transaction' AND query LIKE 'FETCH %'",
    )
    .load(&mut conn)
    .await
    .unwrap();
    rows.into_iter().map(|r| r.pid).collect()
}

/// How many exports are reading, once `n` are or after 10 s.
async fn exports_reading(app: &TestApp, n: usize) -> usize {
    let mut reading = 0;
    for _ in 0..100 {
        reading = exports_waiting(app).await.len();
        if reading >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reading
}

/// A GET over a plain socket with a small receive buffer, so that the server cannot push much
/// ahead of what the test reads.
async fn raw_get(app: &TestApp, path: &str, cookie: &str) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: km_session={cookie}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

async fn read_to_end(stream: &mut tokio::net::TcpStream, mut got: Vec<u8>) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut got))
        .await
        .expect("the response ends")
        .expect("read");
    got
}

/// One key with a rollup for every hour of 360 days and 8 endpoints: an hourly export of
/// about 70,000 rows (10 MB), far more than socket buffers hold.
async fn big_key(app: &TestApp) -> (Uuid, String) {
    let owner = app.user("big@example.com", Role::Merchant).await;
    let (key, _) = api_keys::create(&app.services.db, owner.id, &KeyName::parse("big").unwrap()).await.unwrap();
    let token = sessions::create(&app.services.db, owner.id, None).await.unwrap();
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    diesel::sql_query(
        "INSERT INTO api_key_usage_hour (api_key_id, period_start, method, endpoint, status, requests, throttled, \
         bytes_in, bytes_out, latency_hist) \
         SELECT $1, h, 'GET', e, 200, 5, 0, 10, 210, '{\"340\": 3, \"351\": 2}'::jsonb \
         FROM generate_series('2025-01-01T00:00:00Z'::timestamptz, '2025-12-26T23:00:00Z', interval '1 hour') h, \
         unnest(ARRAY['/a', '/b', '/c', '/d', '/e', '/f', '/g', '/h']) e",
    )
    .bind::<SqlUuid, _>(key.id.0)
    .execute(&mut conn)
    .await
    .unwrap();
    (key.id.0, token.as_str().to_owned())
}

/// Fails against exports built in memory: they have read every row before the first byte goes
/// out, and no database session is left reading while the client takes its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_download_starts_while_the_export_is_still_reading_and_breaks_if_reading_fails() {
    let app = TestApp::spawn().await;
    let (key, cookie) = big_key(&app).await;
    let path = format!("/dashboard/developers/api-keys/{key}/usage.csv?from=2025-01-01&to=2025-12-31&granularity=hour");

    let mut stream = raw_get(&app, &path, &cookie).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("period_start,key_id") {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200") && head.contains("transfer-encoding: chunked"), "{head}");

    // The test reads no further: the export waits, its cursor open, for the client.
    let mut waiting = Vec::new();
    for _ in 0..100 {
        waiting = exports_waiting(&app).await;
        if !waiting.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(waiting.len(), 1, "no export session waits between pieces: the CSV was not streamed");

    // The database goes away mid-export: the download must not end as if it were complete.
    let mut conn = services::db::conn(&app.services.db).await.unwrap();
    diesel::sql_query("SELECT pg_terminate_backend($1)")
        .bind::<Integer, _>(waiting[0])
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let got = read_to_end(&mut stream, got).await;
    assert!(got.len() < 5_000_000, "{} bytes: the export went on", got.len());
    assert!(!got.ends_with(b"\r\n0\r\n\r\n"), "a failed export ended like a complete one");

    // Whereas a complete export does end its chunked body (and left no session behind).
    let short =
        format!("/dashboard/developers/api-keys/{key}/usage.csv?from=2025-03-01&to=2025-03-02&granularity=hour");
    let mut stream = raw_get(&app, &short, &cookie).await;
    let got = read_to_end(&mut stream, Vec::new()).await;
    assert!(got.starts_with(b"HTTP/1.1 200") && got.ends_with(b"\r\n0\r\n\r\n"), "{}", String::from_utf8_lossy(&got));
    assert!(exports_waiting(&app).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_whose_client_stops_reading_lets_go_of_its_connection_and_ends_broken() {
    let Dataset { app, keys, range } = dataset().await;
    let spec = spec(&keys, Granularity::Hour, range);
    // Long enough for the test to see the export waiting on a loaded machine.
    let stall_limit = Duration::from_secs(2);
    let pace = Pace { piece_rows: 7, stall_limit };
    let mut stream =
        CsvStream::start(&app.services.db, app.services.exports.take(0).await.unwrap(), spec, pace).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with("period_start,"));
    // Reading is a piece ahead of the client, waiting for it (for up to the stall limit).
    let mut waiting = 0;
    for _ in 0..100 {
        waiting = exports_waiting(&app).await.len();
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(waiting, 1);
    // Then it lets go, the client still not reading.
    let deadline = std::time::Instant::now() + stall_limit * 3;
    while !exports_waiting(&app).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "a stalled export still holds its transaction");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut last = None;
    while let Some(item) = stream.next().await {
        last = Some(item);
    }
    assert!(matches!(last, Some(Err(_))), "a stalled export ended as if complete: {last:?}");
}

/// One account runs at most two exports at once: its slow downloads cannot keep every other
/// account's exports (an admin's invoicing one too) waiting for a place. A third gets a 429 at
/// once, which says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_runs_at_most_two_exports_at_once() {
    // Four places for exports: a quarter of the pool.
    let app = TestApp::spawn_with(&[("KEYMETER_DB_POOL_SIZE", "16".into())]).await;
    let (key, cookie) = big_key(&app).await;
    let path = format!("/dashboard/developers/api-keys/{key}/usage.csv?from=2025-01-01&to=2025-12-31&granularity=hour");
    let _slow = [raw_get(&app, &path, &cookie).await, raw_get(&app, &path, &cookie).await];
    assert_eq!(exports_reading(&app, 2).await, 2, "both slow downloads are reading");

    let third = client().get(app.url(&path)).header("cookie", format!("km_session={cookie}")).send().await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(third.headers()["retry-after"], "10");
    let body: serde_json::Value = third.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_exports", "{body}");

    // Another account still gets a place.
    let admin = app.user("admin@example.com", Role::Admin).await;
    let session = sessions::create(&app.services.db, admin.id, None).await.unwrap();
    let short = format!("/dashboard/developers/api-keys/{key}/usage.csv?from=2025-03-01&to=2025-03-01&granularity=day");
    let res = client()
        .get(app.url(&short))
        .header("cookie", format!("km_session={}", session.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// Downloads that take their time (slow clients) each hold a database connection while they
/// read. Enough of them took the whole pool, and pages, sign-in and the metered API answered
/// 503 until they ended. Exports now share a quarter of the pool; more wait a little for a
/// place, then get a 503 that says when to try again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_downloads_take_a_share_of_the_database_not_the_whole_of_it() {
    let app = TestApp::spawn_with(&[("KEYMETER_DB_POOL_SIZE", "8".into())]).await;
    let (key, cookie) = big_key(&app).await;
    let path = format!("/dashboard/developers/api-keys/{key}/usage.csv?from=2025-01-01&to=2025-12-31&granularity=hour");
    // Ten clients that read nothing after asking, each of another account (one account may run
    // only two exports at once; admins may export any key).
    let mut slow = Vec::new();
    for i in 0..10 {
        let admin = app.user(&format!("admin-{i}@example.com"), Role::Admin).await;
        let session = sessions::create(&app.services.db, admin.id, None).await.unwrap();
        slow.push(raw_get(&app, &path, session.as_str()).await);
    }
    assert_eq!(exports_reading(&app, 2).await, 2, "a quarter of the pool of 8 reads for the slow clients");

    // The rest of the product keeps its connections.
    let page = client()
        .get(app.url("/dashboard/developers/api-keys"))
        .header("accept", "text/html")
        .header("cookie", format!("km_session={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);

    // The others waited for a place, then were told when to try again.
    let mut heads = Vec::new();
    for stream in &mut slow {
        let mut buf = vec![0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await.unwrap().unwrap();
        heads.push(String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase());
    }
    let busy: Vec<&String> = heads.iter().filter(|h| h.starts_with("http/1.1 503")).collect();
    assert_eq!(heads.iter().filter(|h| h.starts_with("http/1.1 200")).count(), 2, "{heads:?}");
    assert_eq!(busy.len(), 8, "{heads:?}");
    assert!(busy.iter().all(|h| h.contains("retry-after: 10") && h.contains("exports_busy")), "{busy:?}");

    // Once the slow clients are gone, exports run again.
    drop(slow);
    let short =
        format!("/dashboard/developers/api-keys/{key}/usage.csv?from=2025-03-01&to=2025-03-02&granularity=hour");
    let mut stream = raw_get(&app, &short, &cookie).await;
    let got = read_to_end(&mut stream, Vec::new()).await;
    assert!(got.starts_with(b"HTTP/1.1 200") && got.ends_with(b"\r\n0\r\n\r\n"), "{}", String::from_utf8_lossy(&got));
}
