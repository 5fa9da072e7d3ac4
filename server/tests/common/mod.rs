//! Test harness: each test gets its own database (a copy of the migrated template that
//! `make test` prepares), the shared test Redis, and a real server on a free port.

#![allow(dead_code)]

pub mod processes;
pub mod smtp_sink;

use std::sync::atomic::{AtomicU32, Ordering};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use keymeter::config::Config;
use keymeter::startup::{self, Application};
use reqwest::redirect::Policy;
use services::accounts::{self, Email, Password, Role, User};
use services::keys::{api_keys, ApiKeyId, KeyName, Quota, QuotaLimit};
use services::quota_changes::{set_quota, ChangeSource, QuotaChange};
use services::usage::UsageEvent;
use services::Services;

pub const PASSWORD: &str = "a long test password";

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the tests with `make test`"))
}

pub struct TestApp {
    pub base: String,
    pub services: Services,
    pub config: Config,
    pub db_name: String,
    /// `/metrics`, when `KEYMETER_METRICS_LISTEN` was set.
    pub metrics_url: Option<String>,
}

/// A client that keeps cookies and does not follow redirects, so tests see them. A reply that
/// never comes fails its test within two minutes instead of holding the whole run (`cargo test`
/// has no timeout of its own).
pub fn client() -> reqwest::Client {
    client_builder().build().expect("client")
}

/// Such a client that says it is this browser (`User-Agent`).
pub fn browser(user_agent: &str) -> reqwest::Client {
    client_builder().user_agent(user_agent).build().expect("client")
}

pub const FIREFOX_ON_LINUX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
pub const CHROME_ON_ANDROID: &str =
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36";

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().cookie_store(true).redirect(Policy::none()).timeout(std::time::Duration::from_secs(120))
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

async fn create_database() -> (String, String) {
    let pg = env("KEYMETER_TEST_PG");
    let name = format!(
        "test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        uuid::Uuid::new_v4().simple()
    );
    let mut admin = AsyncPgConnection::establish(&format!("{pg}/postgres")).await.expect("connect to test PostgreSQL");
    diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE keymeter_template"))
        .execute(&mut admin)
        .await
        .expect("clone the template database");
    (format!("{pg}/{name}"), name)
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// A server with some settings changed, e.g. `("SMTP_URL", …)`.
    pub async fn spawn_with(settings: &[(&'static str, String)]) -> Self {
        let (database_url, db_name) = create_database().await;
        Self::spawn_on(database_url, db_name, settings).await
    }

    /// An instance whose own mail sender is off, so a test can drive a `Mailer` itself.
    pub async fn spawn_without_mailer() -> Self {
        let (database_url, db_name) = create_database().await;
        // Services only, no server: nothing else sends this database's mail.
        let config = Self::config(&database_url, &db_name, &[]);
        let services = startup::connect(&config).await.expect("connect services");
        Self { base: String::new(), services, config, db_name, metrics_url: None }
    }

    /// Another instance of the server on the same database and Redis, as in a scaled-out
    /// deployment.
    pub async fn spawn_sibling(&self) -> Self {
        self.spawn_sibling_with(&[]).await
    }

    pub async fn spawn_sibling_with(&self, settings: &[(&'static str, String)]) -> Self {
        Self::spawn_on(self.config.database_url.clone(), self.db_name.clone(), settings).await
    }

    async fn spawn_on(database_url: String, db_name: String, settings: &[(&'static str, String)]) -> Self {
        let config = Self::config(&database_url, &db_name, settings);
        let services = startup::connect(&config).await.expect("connect services");
        let app = Application::with_services(&config, services.clone()).await.expect("bind");
        let base = format!("http://{}", app.local_addr());
        let metrics_url = app.metrics_addr().map(|at| format!("http://{at}/metrics"));
        tokio::spawn(app.run_until_stopped());
        Self { base, services, config, db_name, metrics_url }
    }

    fn config(database_url: &str, db_name: &str, settings: &[(&'static str, String)]) -> Config {
        let (database_url, db_name) = (database_url.to_owned(), db_name.to_owned());
        Config::from_lookup(|name| {
            if let Some((_, value)) = settings.iter().find(|(n, _)| *n == name) {
                return Some(value.clone());
            }
            match name {
                "DATABASE_URL" => Some(database_url.clone()),
                "REDIS_URL" => Some(env("KEYMETER_TEST_REDIS")),
                "KEYMETER_LISTEN" => Some("127.0.0.1:0".into()),
                // Tests share one Redis: each database gets its own usage stream.
                "KEYMETER_REDIS_NAMESPACE" => Some(db_name.clone()),
                "KEYMETER_MAIL_DIR" => {
                    Some(std::env::temp_dir().join(format!("keymeter-mail-{db_name}")).display().to_string())
                }
                "KEYMETER_DB_POOL_SIZE" => Some("4".into()),
                "KEYMETER_REDIS_POOL_SIZE" => Some("8".into()),
                // Exactness tests run many instances on two busy cores: a slow reply must not
                // count as Redis being down (the reliability tests set their own timeout).
                "KEYMETER_REDIS_TIMEOUT_MS" => Some("3000".into()),
                _ => None,
            }
        })
        .expect("test config")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn user(&self, email: &str, role: Role) -> User {
        accounts::create_user(
            &self.services.db,
            &Email::parse(email).unwrap(),
            &Password::parse(PASSWORD).unwrap(),
            role,
        )
        .await
        .expect("create user")
    }

    /// Signs in through the real server function; returns the client holding the session.
    pub async fn signed_in(&self, email: &str) -> reqwest::Client {
        let client = client();
        let res = self.login(&client, email, PASSWORD).await;
        assert!(res.status().is_redirection() || res.status().is_success(), "login failed: {}", res.status());
        client
    }

    pub async fn login(&self, client: &reqwest::Client, email: &str, password: &str) -> reqwest::Response {
        self.login_request(client, email, password).send().await.expect("login request")
    }

    /// The sign-in form's post, as a browser sends it (it accepts HTML, so success is a 302),
    /// for a test to add headers to.
    pub fn login_request(&self, client: &reqwest::Client, email: &str, password: &str) -> reqwest::RequestBuilder {
        client
            .post(self.url("/rpc/auth/login"))
            .header("accept", "text/html")
            .form(&[("email", email), ("password", password)])
    }

    /// Signs in from behind a trusted proxy that forwards for `forwarded`.
    pub async fn login_forwarded(
        &self,
        client: &reqwest::Client,
        forwarded: &str,
        email: &str,
        password: &str,
    ) -> reqwest::Response {
        let request = self.login_request(client, email, password).header("x-forwarded-for", forwarded);
        request.send().await.expect("login request")
    }

    /// A merchant with one API key of the given hourly and daily limits; returns the secret
    /// and the key id.
    pub async fn key_with_quota(&self, per_hour: i64, per_day: i64) -> (String, ApiKeyId) {
        let email = format!("owner-{}@example.com", uuid::Uuid::new_v4().simple());
        let owner = self.user(&email, Role::Merchant).await;
        let (key, secret) =
            api_keys::create(&self.services.db, owner.id, &KeyName::parse("test key").unwrap()).await.expect("key");
        self.set_quota(key.id, per_hour, per_day).await;
        (secret.expose().to_owned(), key.id)
    }

    pub async fn set_quota(&self, id: ApiKeyId, per_hour: i64, per_day: i64) {
        let quota = Quota {
            per_hour: QuotaLimit::new(per_hour).unwrap(),
            per_day: QuotaLimit::new(per_day).unwrap(),
            burst_per_second: None,
        };
        let change = QuotaChange { actor: None, source: ChangeSource::Operator, reason: "test setup" };
        set_quota(&self.services, id, &quota, &change).await.expect("set quota");
    }

    /// Waits (up to 15 s) until PostgreSQL holds `n` usage events of the key; returns the count.
    pub async fn wait_for_events(&self, id: ApiKeyId, n: i64) -> i64 {
        let mut count = 0;
        for _ in 0..150 {
            count = self.event_count(id).await;
            if count >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        count
    }

    /// Waits (up to 15 s) until the usage writers have stored every event handed to this
    /// deployment's stream (its group has nothing unread and nothing unacknowledged). With no
    /// request in flight, nothing more can arrive after this: checks that nothing was stored
    /// twice are exact, not a guess after a sleep.
    pub async fn wait_until_usage_stored(&self) {
        let mut last = None;
        for _ in 0..150 {
            let state = self.usage_stream_groups().await;
            if !state.is_empty() && state.iter().all(|s| *s == (Some(0), Some(0))) {
                return;
            }
            last = Some(state);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("usage still on its way to PostgreSQL after 15 s: (pending, lag) {last:?}");
    }

    /// For each consumer group of this deployment's usage stream: its entries read but not
    /// acknowledged (`pending`) and not read yet (`lag`).
    pub async fn usage_stream_groups(&self) -> Vec<(Option<i64>, Option<i64>)> {
        use deadpool_redis::redis::{self, Value};
        let stream = services::usage::recorder::stream_name(&self.services.namespace);
        let mut conn = services::redis_pool::conn(&self.services.redis).await.unwrap();
        let groups: Vec<std::collections::HashMap<String, Value>> =
            redis::cmd("XINFO").arg("GROUPS").arg(&stream).query_async(&mut conn).await.unwrap_or_default();
        let count = |g: &std::collections::HashMap<String, Value>, field: &str| match g.get(field) {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        };
        groups.iter().map(|g| (count(g, "pending"), count(g, "lag"))).collect()
    }

    /// Waits (up to 15 s) until the outbox has no unsent email left.
    pub async fn wait_until_mail_sent(&self) {
        let mut unsent = 0;
        for _ in 0..150 {
            unsent = self.count("SELECT count(*) FROM outbound_emails WHERE sent_at IS NULL").await;
            if unsent == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("{unsent} emails still unsent after 15 s");
    }

    /// Cuts this test's database off (no new connections, the open ones ended) or lets it be
    /// reached again; a PostgreSQL outage for this test only.
    pub async fn set_database_reachable(&self, reachable: bool) {
        let mut admin = AsyncPgConnection::establish(&format!("{}/postgres", env("KEYMETER_TEST_PG"))).await.unwrap();
        let db = &self.db_name;
        diesel::sql_query(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS {reachable}"))
            .execute(&mut admin)
            .await
            .unwrap();
        if !reachable {
            diesel::sql_query(format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
            ))
            .execute(&mut admin)
            .await
            .unwrap();
        }
    }

    /// Makes every unsent email due now, as the retry backoff would after a while.
    pub async fn make_mail_due(&self) {
        let mut conn = services::db::conn(&self.services.db).await.unwrap();
        diesel::sql_query("UPDATE outbound_emails SET next_attempt_at = now() WHERE sent_at IS NULL")
            .execute(&mut conn)
            .await
            .unwrap();
    }

    /// A metered call: GET `path` with `secret` as the bearer key.
    pub async fn call(&self, path: &str, secret: &str) -> reqwest::Response {
        client().get(self.url(path)).bearer_auth(secret).send().await.expect("an answer")
    }

    /// Puts the quota clock (the Redis-derived one every window is counted on) at `target_ms`.
    pub async fn set_clock(&self, target_ms: i64) {
        self.services.quota.set_test_clock_offset_ms(0);
        let real = self.services.quota.now_ms().await.unwrap();
        self.services.quota.set_test_clock_offset_ms(target_ms - real);
    }

    pub async fn event_count(&self, id: ApiKeyId) -> i64 {
        self.count(&format!("SELECT count(*) FROM api_key_usage WHERE api_key_id = '{}'", id.0)).await
    }

    /// The one number a query answers (a count or a sum), in this test's database.
    pub async fn count(&self, query: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = services::db::conn(&self.services.db).await.unwrap();
        let row: N = diesel::sql_query(format!("SELECT coalesce(({query}), 0)::bigint AS n"))
            .get_result(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        row.n
    }

    /// Runs a statement in this test's database; returns how many rows it touched.
    pub async fn run_sql(&self, statement: &str) -> usize {
        let mut conn = services::db::conn(&self.services.db).await.unwrap();
        diesel::sql_query(statement).execute(&mut conn).await.unwrap_or_else(|e| panic!("{statement}: {e}"))
    }

    /// The text column `t` of every row a query answers, in its order.
    pub async fn texts(&self, query: &str) -> Vec<String> {
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            t: String,
        }
        let mut conn = services::db::conn(&self.services.db).await.unwrap();
        let rows: Vec<Row> = diesel::sql_query(query).load(&mut conn).await.unwrap_or_else(|e| panic!("{query}: {e}"));
        rows.into_iter().map(|r| r.t).collect()
    }

    /// Waits (at most 10 s) until `n` connections to this test's database wait for a lock: what
    /// the test started has reached the rows a transaction it holds has locked.
    pub async fn wait_for_lock_waits(&self, n: i64) {
        let query =
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'";
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.count(query).await < n {
            assert!(std::time::Instant::now() < deadline, "fewer than {n} lock waits after 10 s");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Loads a page as a browser would.
    pub async fn page(&self, client: &reqwest::Client, path: &str) -> reqwest::Response {
        client.get(self.url(path)).header("accept", "text/html").send().await.expect("page request")
    }

    /// The first page of the signed-in user's key list, as `keys/list` returns it.
    pub async fn key_list(&self, client: &reqwest::Client) -> Vec<serde_json::Value> {
        let page: serde_json::Value = self.rpc(client, "keys/list", &[]).await.json().await.expect("key list");
        page["keys"].as_array().expect("a page of keys").clone()
    }

    /// Calls a server function with form-encoded arguments.
    pub async fn rpc(&self, client: &reqwest::Client, path: &str, args: &[(&str, &str)]) -> reqwest::Response {
        client.post(self.url(&format!("/rpc/{path}"))).form(args).send().await.expect("rpc request")
    }
}

/// A usage event of `GET /api/v1/ping` as the tracker records it, for tests that feed the
/// usage writer directly.
pub fn ping_event(key: uuid::Uuid, at_ms: i64, status: u16, latency_us: u64, throttled: bool) -> UsageEvent {
    UsageEvent {
        request_id: uuid::Uuid::now_v7(),
        key_id: key,
        at_ms,
        method: "GET".into(),
        endpoint: "/api/v1/ping".into(),
        status,
        latency_us,
        bytes_in: 0,
        bytes_out: 42,
        throttled,
        enforced: true,
        alerts: Vec::new(),
    }
}

/// `/metrics` as Prometheus reads it (see `KEYMETER_METRICS_LISTEN`).
pub type Samples = std::collections::HashMap<String, f64>;

/// One scrape of `/metrics`: each sample line's name and labels, and its value. Every sample
/// belongs to a family announced with its type.
pub async fn scrape(url: &str) -> Samples {
    let res = client().get(url).send().await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let content_type = res.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = res.text().await.unwrap();
    let typed: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (sample, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {l:?}"));
            let name = sample.split('{').next().unwrap();
            // A histogram's samples are its name with `_bucket`, `_sum` or `_count`.
            let typed_as = |family: &&str| {
                name == *family
                    || name.strip_prefix(family).is_some_and(|suffix| ["_bucket", "_sum", "_count"].contains(&suffix))
            };
            assert!(typed.iter().any(typed_as), "{name} has no TYPE line:\n{text}");
            (sample.to_owned(), value.parse().unwrap_or_else(|_| panic!("not a number: {l:?}")))
        })
        .collect()
}

/// Scrapes until `ready` holds (counters are updated just after the work they count), for at
/// most 10 s.
pub async fn scrape_until(url: &str, ready: impl Fn(&Samples) -> bool) -> Samples {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let samples = scrape(url).await;
        if ready(&samples) {
            return samples;
        }
        assert!(std::time::Instant::now() < deadline, "metrics never got there: {samples:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub fn sample(m: &Samples, name: &str) -> f64 {
    *m.get(name).unwrap_or_else(|| panic!("{name} missing from {m:#?}"))
}
