//! The operator's view: the `keymeter` binary as deployed, its subcommands and its environment
//! configuration. Each test runs the real binary against a database of its own.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::smtp_sink::SmtpSink;
use common::{env, TestApp};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use services::accounts::{self, Email, Role, SignInFrom};
use services::keys::{api_keys, ApiKeyId, KeyName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// The binary against a database and the test Redis, with nothing else from the test's own
/// environment (no `SMTP_URL`, no `RUST_LOG`, …).
fn keymeter_on(database_url: &str, namespace: &str, mail_dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keymeter"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", env("KEYMETER_TEST_REDIS"))
        .env("KEYMETER_REDIS_NAMESPACE", namespace)
        .env("KEYMETER_MAIL_DIR", mail_dir)
        .env("KEYMETER_LISTEN", "127.0.0.1:0")
        .env("KEYMETER_DB_POOL_SIZE", "2")
        .env("KEYMETER_REDIS_POOL_SIZE", "2")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

fn keymeter(app: &TestApp) -> Command {
    keymeter_on(&app.config.database_url, &app.db_name, &app.config.mail_dir)
}

struct Run {
    /// `None` if it was still running at the time limit (then killed), or died of a signal.
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?} after {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.took, self.stdout, self.stderr)
    }
}

/// Runs a command to its end, or kills it at `limit`.
async fn run_with(cmd: &mut Command, stdin: Option<&str>, limit: Duration) -> Run {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start keymeter");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
    }
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let collect = async {
        let (mut stdout, mut stderr) = (String::new(), String::new());
        let _ = tokio::join!(out.read_to_string(&mut stdout), err.read_to_string(&mut stderr));
        let status = child.wait().await.unwrap();
        (status.code(), stdout, stderr)
    };
    match tokio::time::timeout(limit, collect).await {
        Ok((code, stdout, stderr)) => Run { code, stdout, stderr, took: started.elapsed() },
        Err(_) => Run { code: None, stdout: String::new(), stderr: "(killed: still running)".into(), took: limit },
    }
}

async fn run(cmd: &mut Command) -> Run {
    run_with(cmd, None, Duration::from_secs(60)).await
}

/// A brand-new database with nothing in it; returns its URL.
async fn empty_database() -> String {
    let pg = env("KEYMETER_TEST_PG");
    let name = format!("cli_empty_{}", uuid::Uuid::new_v4().simple());
    let mut admin = AsyncPgConnection::establish(&format!("{pg}/postgres")).await.unwrap();
    diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut admin).await.unwrap();
    format!("{pg}/{name}")
}

/// The month the tests' summaries are for: the month before last, settled whenever the tests run
/// (last month's summaries are refused in the first minutes of a month, until its last calls
/// are stored).
fn settled_month() -> String {
    services::usage::periods::Month::containing(chrono::Utc::now()).previous().previous().to_string()
}

/// An owner with a key that existed all of [`settled_month`], so that `report monthly` has a
/// summary for them.
async fn owner_of_settled_month(app: &TestApp, email: &str) -> ApiKeyId {
    let owner = app.user(email, Role::Merchant).await;
    let (key, _) = api_keys::create(&app.services.db, owner.id, &KeyName::parse("checkout").unwrap()).await.unwrap();
    api_keys::backdate(&app.services.db, key.id, chrono::Utc::now() - chrono::Duration::days(100)).await.unwrap();
    key.id
}

#[tokio::test]
async fn serve_and_every_command_refuse_a_database_with_pending_migrations() {
    let url = empty_database().await;
    let mail = std::env::temp_dir().join("keymeter-cli-unmigrated");
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations")).unwrap().count();
    let expected = format!("the database at {url} has {migrations} pending migrations: run `keymeter migrate`");

    // Before: the server started, /readyz said ok and every request was a 500.
    let serve = run_with(keymeter_on(&url, "cli-unmigrated", &mail).arg("serve"), None, Duration::from_secs(20)).await;
    assert_eq!(serve.code, Some(1), "{serve:?}");
    assert!(serve.stderr.contains(&expected), "{serve:?}");
    for args in [&["key", "list", "--owner", "ann@example.com"][..], &["report", "monthly"], &["demo", "seed"]] {
        let r = run(keymeter_on(&url, "cli-unmigrated", &mail).args(args)).await;
        assert_eq!(r.code, Some(1), "{args:?}: {r:?}");
        assert!(r.stderr.contains(&expected) && !r.stderr.contains("relation"), "{args:?}: {r:?}");
    }

    // Looking changed nothing; `migrate` then makes the database usable.
    let migrate = run(keymeter_on(&url, "cli-unmigrated", &mail).arg("migrate")).await;
    assert_eq!(migrate.code, Some(0), "{migrate:?}");
    let list =
        run(keymeter_on(&url, "cli-unmigrated", &mail).args(["key", "list", "--owner", "ann@example.com"])).await;
    assert!(list.stderr.contains("no account with the email ann@example.com"), "{list:?}");
}

#[tokio::test]
async fn report_monthly_tells_which_summaries_were_sent_and_which_stay_queued() {
    let app = TestApp::spawn_without_mailer().await;
    owner_of_settled_month(&app, "ann@example.com").await;
    // Nothing listens there: every send fails at once (connection refused).
    let nowhere = format!("smtp://127.0.0.1:{}", common::processes::free_port());
    let r =
        run(keymeter(&app).args(["report", "monthly", "--month", &settled_month()]).env("SMTP_URL", &nowhere)).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(!r.stdout.contains("handed to"), "{r:?}");
    assert!(r.stdout.contains("mail: 0 of 1 sent via SMTP 127.0.0.1:"), "{r:?}");
    assert!(r.stdout.contains("not sent to ann@example.com: Connection error"), "{r:?}");
    assert!(r.stderr.contains("retries the ones still queued"), "{r:?}");
    // Still queued with its error, for a server's sender to retry.
    let queued = "SELECT count(*) FROM outbound_emails WHERE sent_at IS NULL AND attempts = 1 \
                  AND last_error LIKE '%refused%'";
    assert_eq!(app.count(queued).await, 1);

    // Sent: said so, and success.
    owner_of_settled_month(&app, "bob@example.com").await;
    let sink = SmtpSink::start().await;
    let r =
        run(keymeter(&app).args(["report", "monthly", "--month", &settled_month()]).env("SMTP_URL", sink.url())).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("queued for 1 owner(s), 1 already had it"), "{r:?}");
    assert!(r.stdout.contains("mail: 1 of 1 sent via SMTP"), "{r:?}");
}

#[tokio::test]
async fn report_monthly_gives_up_on_a_mail_server_that_never_answers() {
    let app = TestApp::spawn_without_mailer().await;
    owner_of_settled_month(&app, "ann@example.com").await;
    owner_of_settled_month(&app, "bob@example.com").await;
    // Accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let smtp_url = format!("smtp://127.0.0.1:{port}");
    let mut cmd = keymeter(&app);
    cmd.args(["report", "monthly", "--month", &settled_month()]).env("SMTP_URL", smtp_url);
    // Before, the command waited on the first message for good.
    let r = run_with(&mut cmd, None, Duration::from_secs(90)).await;
    held.abort();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.took < Duration::from_secs(50), "{r:?}");
    assert!(r.stdout.contains("mail: 0 of 2 sent"), "{r:?}");
    assert!(r.stdout.contains("did not answer within"), "{r:?}");
    // Both stay queued, due for a server's sender.
    assert_eq!(app.count("SELECT count(*) FROM outbound_emails WHERE sent_at IS NULL").await, 2);
    let due = "SELECT count(*) FROM outbound_emails WHERE next_attempt_at < now() + interval '1 minute'";
    assert_eq!(app.count(due).await, 2);
}

#[tokio::test]
async fn report_monthly_checks_the_mail_settings_before_it_queues_anything() {
    let app = TestApp::spawn_without_mailer().await;
    owner_of_settled_month(&app, "ann@example.com").await;
    for (var, value) in
        [("SMTP_URL", "nonsense"), ("KEYMETER_MAIL_DIR", "/proc/nope"), ("KEYMETER_MAIL_FROM", "bad from")]
    {
        let r = run(keymeter(&app).args(["report", "monthly"]).env(var, value)).await;
        assert_eq!(r.code, Some(1), "{var}: {r:?}");
        assert!(r.stderr.contains(var) && !r.stderr.contains("internal error"), "{var}: {r:?}");
        // Nothing recorded as sent, nothing queued.
        assert_eq!(app.count("SELECT count(*) FROM monthly_reports").await, 0, "{var}");
        assert_eq!(app.count("SELECT count(*) FROM outbound_emails").await, 0, "{var}");
    }
}

#[tokio::test]
async fn passwords_in_urls_are_never_printed() {
    let app = TestApp::spawn_without_mailer().await;
    let pg = "postgres://postgres@127.0.0.1:1/db?sslmode=prefer&password=pg-secret-in-query";
    let r = run(keymeter(&app).args(["key", "list", "--owner", "ann@example.com"]).env("DATABASE_URL", pg)).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("PostgreSQL at postgres://postgres@127.0.0.1:1/db?sslmode=prefer&password=***"), "{r:?}");
    assert!(!r.stderr.contains("pg-secret-in-query"), "{r:?}");
    // With its cause: a closed port is not an unknown host.
    assert!(r.stderr.contains("error connecting to server: Connection refused"), "{r:?}");

    // `quota set` needs Redis (it tells every instance of the change).
    let quota_set =
        ["quota", "set", "--key", "7c9e6679-7425-40de-944b-e07fc1f90ae7", "--per-hour", "1", "--per-day", "1"];
    for redis in ["redis://127.0.0.1:1/?password=redis-secret-in-query", "redis://:redis-secret-in-query@127.0.0.1:1"] {
        let r = run(keymeter(&app).args(quota_set).env("REDIS_URL", redis)).await;
        assert_eq!(r.code, Some(1), "{r:?}");
        assert!(r.stderr.contains("Redis at redis://"), "{r:?}");
        assert!(!r.stderr.contains("redis-secret-in-query"), "{r:?}");
    }
}

#[tokio::test]
async fn bad_settings_are_refused_naming_their_variable() {
    let app = TestApp::spawn_without_mailer().await;
    let list = ["key", "list", "--owner", "ann@example.com"];
    // Key commands need PostgreSQL only; Redis' settings are read by those that use it.
    let quota_set =
        ["quota", "set", "--key", "7c9e6679-7425-40de-944b-e07fc1f90ae7", "--per-hour", "1", "--per-day", "1"];
    let cases: &[(&str, &str, &[&str])] = &[
        ("KEYMETER_DB_POOL_SIZE", "18446744073709551615", &list),
        ("KEYMETER_DB_POOL_SIZE", "1000000000000", &list),
        ("KEYMETER_REDIS_POOL_SIZE", "18446744073709551615", &list),
        ("KEYMETER_REDIS_POOL_SIZE", "1000000000000", &list),
        ("KEYMETER_MAX_PER_HOUR", "18446744073709551615", &list),
        ("KEYMETER_MAX_PER_DAY", "9223372036854775808", &list),
        ("KEYMETER_LOG_FORMAT", "JSON", &list),
        ("KEYMETER_LOG_FORMAT", "xml", &list),
        ("KEYMETER_PUBLIC_URL", "keymeter.example.com", &list),
        ("KEYMETER_MAIL_FROM", "not an address", &list),
        ("REDIS_URL", "redis://host:port/abc", &quota_set),
        ("KEYMETER_MAIL_DIR", "/proc/nope", &["serve"]),
    ];
    // Every case is tried and every failure reported, not just the first.
    let mut failures = Vec::new();
    for (var, value, args) in cases {
        let r = run_with(keymeter(&app).args(*args).env(var, value), None, Duration::from_secs(20)).await;
        let named = r.stderr.contains(&format!("invalid {var}"));
        if r.code != Some(1) || !named || r.stderr.contains("panicked") || r.stderr.contains("internal error") {
            failures.push(format!("{var}={value}: {r:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn user_add_refuses_addresses_the_mailer_cannot_use_and_blank_passwords() {
    let app = TestApp::spawn_without_mailer().await;
    let add = |email: &str| {
        let mut cmd = keymeter(&app);
        cmd.args(["user", "add", "--email", email]);
        cmd
    };
    let r = run_with(&mut add("a\"<script>@b.com"), Some("a long password\n"), Duration::from_secs(30)).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("--email: Enter a valid email address."), "{r:?}");
    let blank = format!("{}\n", " ".repeat(16));
    let r = run_with(&mut add("ann@example.com"), Some(&blank), Duration::from_secs(30)).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("only spaces"), "{r:?}");
    assert_eq!(app.count("SELECT count(*) FROM users").await, 0);

    // A good address and password through a pipe still work, and the web sign-in agrees.
    let r = run_with(&mut add("Ann@Example.com"), Some("a long password\n"), Duration::from_secs(30)).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("created merchant account ann@example.com"), "{r:?}");
    let signed_in =
        accounts::authenticate(&app.services, "ann@example.com", "a long password", &SignInFrom::client("t")).await;
    assert!(signed_in.is_ok());
    let refused = accounts::authenticate(&app.services, "a\"<script>@b.com", "x", &SignInFrom::client("t")).await;
    assert_eq!(refused.unwrap_err().to_string(), accounts::BAD_CREDENTIALS);
}

#[tokio::test]
async fn user_add_does_not_echo_a_password_typed_on_a_terminal() {
    let app = TestApp::spawn_without_mailer().await;
    // `script` runs the command on a pseudo-terminal and copies our stdin to it, as typing.
    let command = format!("{} user add --email tty@example.com", env!("CARGO_BIN_EXE_keymeter"));
    let cmd = keymeter(&app);
    let envs: Vec<_> = cmd.as_std().get_envs().map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned))).collect();
    let mut script = Command::new("script");
    script.env_clear().args(["-q", "-e", "-c", &command, "/dev/null"]).kill_on_drop(true);
    for (k, v) in envs {
        if let Some(v) = v {
            script.env(k, v);
        }
    }
    let mut child = script.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("script(1) from util-linux");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    // Typed once the prompt shows (the terminal echoes whatever arrives while echo is on).
    let prompt = async {
        let mut buf = [0u8; 256];
        while !seen.contains("password: ") {
            let n = stdout.read(&mut buf).await.unwrap();
            assert!(n > 0, "no prompt: {seen:?}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    tokio::time::timeout(Duration::from_secs(30), prompt).await.expect("the password prompt");
    stdin.write_all(b"typed at a terminal\n").await.unwrap();
    let rest = async {
        let mut line = String::new();
        while stdout.read_line(&mut line).await.unwrap() > 0 {}
        line
    };
    let rest = tokio::time::timeout(Duration::from_secs(30), rest).await.expect("user add finishes");
    drop(stdin);
    let status = child.wait().await.unwrap();
    let all = format!("{seen}{rest}");
    assert!(status.success(), "{all}");
    assert!(all.contains("created merchant account tty@example.com"), "{all}");
    assert!(!all.contains("typed at a terminal"), "the password was echoed: {all:?}");
    let signed_in =
        accounts::authenticate(&app.services, "tty@example.com", "typed at a terminal", &SignInFrom::client("t")).await;
    assert!(signed_in.is_ok());
}

#[tokio::test]
async fn a_key_secret_given_for_a_key_id_is_never_echoed() {
    let app = TestApp::spawn_without_mailer().await;
    let (secret, id) = app.key_with_quota(100, 1000).await;
    let revoke = run(keymeter(&app).args(["key", "revoke", &secret])).await;
    let quota = run(keymeter(&app).args(["quota", "set", "--key", &secret, "--per-hour", "1", "--per-day", "2"])).await;
    for r in [revoke, quota] {
        assert_eq!(r.code, Some(1), "{r:?}");
        assert!(!r.stderr.contains(&secret) && !r.stdout.contains(&secret), "{r:?}");
        let random_part = &secret["km_live_".len()..];
        assert!(!r.stderr.contains(random_part), "{r:?}");
        assert!(r.stderr.contains("looks like a key secret") && r.stderr.contains("key's id"), "{r:?}");
    }
    let key = api_keys::list_all(&app.services.db).await.unwrap().into_iter().find(|k| k.id == id).unwrap();
    assert!(key.revoked_at.is_none());
    assert_eq!(key.quota.per_hour.get(), 100);
}

#[tokio::test]
async fn a_closed_standard_output_is_an_error_not_a_panic() {
    let app = TestApp::spawn_without_mailer().await;
    app.user("ann@example.com", Role::Merchant).await;
    // A pipe whose reader is gone, as `keymeter key create … | (exec 0<&-; …)`.
    let closed = || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        writer
    };
    let mut create = keymeter(&app);
    create
        .args(["key", "create", "--owner", "ann@example.com", "--name", "lost"])
        .stdout(closed())
        .stderr(Stdio::piped());
    let out = create.spawn().unwrap().wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // A key whose secret nobody saw is of no use: it is revoked, and the message says so.
    let owner = accounts::find_user_by_email(&app.services.db, &Email::parse("ann@example.com").unwrap()).await;
    let keys = api_keys::list_for_owner(&app.services.db, owner.unwrap().unwrap().id).await.unwrap();
    let [lost] = keys.as_slice() else { panic!("one key expected: {keys:?}") };
    assert!(lost.revoked_at.is_some(), "{lost:?}");
    assert!(stderr.contains(&format!("the secret of the new key {} could not be written", lost.id)), "{stderr}");
    assert!(stderr.contains("so the key was revoked"), "{stderr}");
    // Its owner never had it: no notice of a revocation that would only alarm them.
    assert_eq!(app.count("SELECT count(*) FROM notifications WHERE kind = 'key_revoked'").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM outbound_emails WHERE subject LIKE '%was revoked'").await, 0);

    let mut seed = keymeter(&app);
    seed.args(["demo", "seed"]).stdout(closed()).stderr(Stdio::piped());
    let out = seed.spawn().unwrap().wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked") && stderr.contains("cannot write to standard output"), "{stderr}");
}

/// The demo key comes with a month of history: its limits are as old as it is, so that last
/// month's summary measures its use against them (5,000/h), not against the defaults.
#[tokio::test]
async fn the_demo_keys_quota_is_as_old_as_its_history() {
    let app = TestApp::spawn_without_mailer().await;
    let r = run(keymeter(&app).args(["demo", "seed"])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let demo_changes = "FROM quota_changes q JOIN api_keys k ON k.id = q.api_key_id WHERE k.name = 'Demo key'";
    assert_eq!(app.count(&format!("SELECT count(*) {demo_changes} AND q.new_per_hour = 5000")).await, 1);
    assert_eq!(app.count(&format!("SELECT count(*) {demo_changes} AND q.changed_at > k.created_at")).await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM api_keys WHERE name = 'Demo key' AND created_at < now() - interval '29 days'")
            .await,
        1
    );
}

/// A leaked key must be revocable while Redis is down: the key commands need PostgreSQL only.
/// A second revocation says the key already was, and when; its owner is told once, by email.
#[tokio::test]
async fn keys_are_listed_and_revoked_without_redis_and_a_second_revocation_says_so() {
    let app = TestApp::spawn_without_mailer().await;
    let owner = app.user("ann@example.com", services::accounts::Role::Merchant).await;
    let (key, _) =
        api_keys::create(&app.services.db, owner.id, &services::keys::KeyName::parse("leaked").unwrap()).await.unwrap();
    let id = key.id.to_string();
    let no_redis = "redis://127.0.0.1:1";
    let list = run(keymeter(&app).args(["key", "list", "--owner", "ann@example.com"]).env("REDIS_URL", no_redis)).await;
    assert_eq!(list.code, Some(0), "{list:?}");
    assert!(list.stdout.starts_with(&format!("{id}\tactive\t")), "{list:?}");

    let revoke = run(keymeter(&app).args(["key", "revoke", &id]).env("REDIS_URL", no_redis)).await;
    assert_eq!(revoke.code, Some(0), "{revoke:?}");
    assert_eq!(revoke.stdout, format!("revoked key {id} (leaked)\n"));
    let revoked_at = api_keys::list_all(&app.services.db).await.unwrap()[0].revoked_at.expect("revoked");

    let again = run(keymeter(&app).args(["key", "revoke", &id])).await;
    assert_eq!(again.code, Some(0), "{again:?}");
    assert_eq!(
        again.stdout,
        format!("key {id} (leaked) was already revoked, on {} (unchanged)\n", revoked_at.to_rfc3339())
    );
    assert_eq!(api_keys::list_all(&app.services.db).await.unwrap()[0].revoked_at, Some(revoked_at));
    let told = "SELECT count(*) FROM outbound_emails WHERE to_address = 'ann@example.com' \
                AND text_body LIKE '%The platform''s operator revoked your API key “leaked”%'";
    assert_eq!(app.count(told).await, 1, "its owner hears of it once");
}

/// `usage set-aside` shows the usage PostgreSQL refused with its error, and `--replay` puts it
/// back in the usage stream, from which a writer stores it. What nobody can read stays set
/// aside, and says so.
#[tokio::test]
async fn usage_set_aside_lists_refused_usage_and_replays_it() {
    // Services only: no server, so no writer moves this deployment's stream behind our back.
    let app = TestApp::spawn_without_mailer().await;
    let list = || async { run(keymeter(&app).args(["usage", "set-aside"])).await };
    let empty = list().await;
    assert_eq!((empty.code, empty.stdout.as_str()), (Some(0), "no usage set aside\n"), "{empty:?}");

    let (_, id) = app.key_with_quota(10, 10).await;
    let stream = services::usage::recorder::stream_name(&app.services.namespace);
    let now = chrono::Utc::now().timestamp_millis();
    let events = [common::ping_event(id.0, now, 200, 1_000, false), common::ping_event(id.0, now, 404, 900, false)];
    let keep = |entry: &'static str, payload: Vec<u8>, why: &'static str| {
        let (redis, stream) = (app.services.redis.clone(), stream.clone());
        async move { services::usage::set_aside::keep(&redis, &stream, entry, &payload, why).await.unwrap() }
    };
    keep("1-0", serde_json::to_vec(&events).unwrap(), "bigint out of range").await;
    keep("2-0", b"not json".to_vec(), "unreadable: expected ident").await;
    let shown = list().await;
    assert_eq!(shown.code, Some(0), "{shown:?}");
    let lines: Vec<&str> = shown.stdout.lines().collect();
    assert_eq!(lines[0], "2 entries set aside (the oldest first):", "{shown:?}");
    assert!(lines[1].ends_with("\t2 event(s)\tbigint out of range"), "{shown:?}");
    assert!(lines[2].contains("\tunreadable ("), "{shown:?}");
    assert!(lines[3].contains("keymeter usage set-aside --replay"), "{shown:?}");

    let replay = run(keymeter(&app).args(["usage", "set-aside", "--replay"])).await;
    assert_eq!(replay.code, Some(0), "{replay:?}");
    let said: Vec<&str> = replay.stdout.lines().collect();
    assert!(said[0].starts_with("1 set-aside entry (2 event(s)) put back in the usage stream"), "{replay:?}");
    assert_eq!(said[1], "1 unreadable entry left set aside: no writer could store them", "{replay:?}");
    assert!(list().await.stdout.starts_with("1 entry set aside"), "the unreadable one stays");
    let round = services::usage::writer::UsageWriter::new(&app.services).step(0).await.unwrap();
    assert_eq!(round.events, 2);
    assert_eq!(app.event_count(id).await, 2);
    let again = run(keymeter(&app).args(["usage", "set-aside", "--replay"])).await;
    assert_eq!(again.stdout, "1 unreadable entry left set aside: no writer could store them\n", "{again:?}");
}

#[tokio::test]
async fn quota_set_refuses_a_revoked_key() {
    let app = TestApp::spawn_without_mailer().await;
    let (_, id) = app.key_with_quota(100, 1000).await;
    api_keys::revoke(&app.services.db, id, &app.services.settings.public_url).await.unwrap();
    let changes = format!("SELECT count(*) FROM quota_changes WHERE api_key_id = '{id}'");
    let before = app.count(&changes).await;
    let r = run(keymeter(&app).args(["quota", "set", "--key", &id.to_string(), "--per-hour", "5", "--per-day", "50"]))
        .await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.contains(&format!("the quota of key {id} was not changed")) && r.stderr.contains("revoked"),
        "{r:?}"
    );
    assert_eq!(app.count(&changes).await, before, "no audit entry");
    let key = api_keys::list_all(&app.services.db).await.unwrap().into_iter().find(|k| k.id == id).unwrap();
    assert_eq!((key.quota.per_hour.get(), key.quota.per_day.get()), (100, 1000));
}

#[tokio::test]
async fn quota_set_keeps_the_burst_limit_unless_told_to_remove_it() {
    let app = TestApp::spawn_without_mailer().await;
    let (_, id) = app.key_with_quota(100, 1000).await;
    let key = id.to_string();
    let burst = || async {
        let keys = api_keys::list_all(&app.services.db).await.unwrap();
        keys.into_iter().find(|k| k.id == id).unwrap().quota.burst_per_second.map(|b| b.get())
    };
    let set = |extra: &[&str]| {
        let mut cmd = keymeter(&app);
        cmd.args(["quota", "set", "--key", &key, "--per-hour", "200", "--per-day", "2000"]).args(extra);
        cmd
    };
    let r = run(&mut set(&["--burst", "5"])).await;
    assert!(r.stdout.contains("burst 5/s"), "{r:?}");
    assert_eq!(burst().await, Some(5));
    // Omitted: kept, as the admin form keeps it.
    let r = run(&mut set(&[])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("200/hour, 2000/day, burst 5/s (kept)"), "{r:?}");
    assert_eq!(burst().await, Some(5));
    let r = run(&mut set(&["--no-burst"])).await;
    assert!(r.stdout.contains("no burst limit"), "{r:?}");
    assert_eq!(burst().await, None);
    // The audit trail shows the burst limits too: a change of the burst alone is no blank entry.
    let trail = services::quota_changes::audit_trail(&app.services.db, None, 1000).await.unwrap();
    let bursts: Vec<_> = trail.iter().filter(|e| e.key_id == id.0).map(|e| (e.old_burst, e.new_burst)).collect();
    assert_eq!(bursts, [(Some(5), None), (None, Some(5)), (None, None)], "newest first");
    let r = run(&mut set(&["--no-burst", "--burst", "3"])).await;
    assert_eq!(r.code, Some(2), "{r:?}");
    // A negative number is a bad limit, said as such (not clap's "unexpected argument '-1'").
    for args in [["--per-hour", "-1", "--per-day", "10"], ["--per-hour", "1", "--per-day", "-10"]] {
        let r = run(keymeter(&app).args(["quota", "set", "--key", &key]).args(args)).await;
        assert_eq!(r.code, Some(1), "{r:?}");
        assert!(r.stderr.contains("positive"), "{r:?}");
    }
    let r = run(&mut set(&["--burst", "-3"])).await;
    assert!(r.stderr.contains("positive"), "{r:?}");
    assert_eq!(burst().await, None, "nothing changed");
    let help = run(keymeter(&app).args(["quota", "set", "--help"])).await;
    assert!(help.stdout.contains("omit to keep the key's current burst limit"), "{help:?}");

    // Setting what is already there changes nothing: no audit entry, nobody told.
    let changes = || async {
        let trail = services::quota_changes::audit_trail(&app.services.db, None, 1000).await.unwrap();
        trail.into_iter().filter(|e| e.key_id == id.0).count()
    };
    let owner = api_keys::list_all(&app.services.db).await.unwrap().into_iter().find(|k| k.id == id).unwrap().owner_id;
    let told_count =
        || async { services::notifications::recent(&app.services.db, owner, 1000, None).await.unwrap().len() };
    let (before, told_before) = (changes().await, told_count().await);
    let r = run(&mut set(&[])).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("(unchanged: it already was)"), "{r:?}");
    assert_eq!(changes().await, before);
    assert_eq!(told_count().await, told_before, "nobody told of no change");
    // A change is told to the key's owner, as an admin's is.
    let told = services::notifications::recent(&app.services.db, owner, 50, None).await.unwrap();
    let told: Vec<&str> = told.iter().map(|n| n.body.as_str()).collect();
    assert!(
        told.iter().any(|b| b.starts_with(
            "The platform's operator set the quota of “test key” to 200 requests per hour and 2,000 per day"
        )),
        "{told:?}"
    );
    // With what changed as it was before.
    let first = "200 requests per hour and 2,000 per day, at most 5 per second \
                 (before: 100 requests per hour and 1,000 per day, no burst limit). Reason:";
    assert!(told.iter().any(|b| b.contains(first)), "{told:?}");
    assert!(
        told.iter().any(|b| b.contains("2,000 per day, with no burst limit (before: at most 5 per second). Reason:")),
        "{told:?}"
    );
}

#[tokio::test]
async fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let app = TestApp::spawn_without_mailer().await;
    let mut serve = keymeter(&app);
    serve.arg("serve").stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = serve.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("keymeter listening") {
                return line;
            }
        }
        panic!("the server ended without listening");
    };
    let line = tokio::time::timeout(Duration::from_secs(30), listening).await.expect("the server starts");
    child.kill().await.unwrap();
    assert!(!line.contains('\u{1b}'), "{line:?}");
    assert!(line.contains("INFO"), "{line:?}");
}

/// The access log: a line per page, server function and link, by route template (a link's
/// token stays out of it); metered calls and health probes are not in it.
#[tokio::test]
async fn the_access_log_has_a_line_per_page_request_by_route_and_none_per_metered_call() {
    let app = TestApp::spawn_without_mailer().await;
    let mut serve = keymeter(&app);
    serve.arg("serve").env("KEYMETER_LOG_FORMAT", "json").stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = serve.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut next_line = async || -> serde_json::Value {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let line = line.expect("a log line within 30 s").unwrap().expect("the server is still running");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
    };
    let base = loop {
        let line = next_line().await;
        if line["fields"]["message"] == "keymeter listening" {
            break format!("http://{}", line["fields"]["address"].as_str().unwrap());
        }
    };
    let http = common::client();
    let token = uuid::Uuid::new_v4().to_string();
    assert_eq!(http.get(format!("{base}/api/v1/ping")).bearer_auth("km_live_nope").send().await.unwrap().status(), 401);
    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{base}/login")).send().await.unwrap().status(), 200);
    let link = http.get(format!("{base}/email/unsubscribe/{token}")).send().await.unwrap().status();
    let signin = http
        .post(format!("{base}/rpc/auth/login"))
        .header("origin", &base)
        .form(&[("email", "nobody@example.com"), ("password", "not a password")])
        .send()
        .await
        .unwrap()
        .status();

    let mut access = Vec::new();
    while access.len() < 3 {
        let line = next_line().await;
        assert!(!line.to_string().contains(&token), "a link's token in the log: {line}");
        if line["target"] == "keymeter::access" {
            let fields = &line["fields"];
            assert!(fields["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{line}");
            access.push((fields["method"].clone(), fields["route"].clone(), fields["status"].clone()));
        }
    }
    child.kill().await.unwrap();
    use serde_json::json;
    assert_eq!(
        access,
        [
            (json!("GET"), json!("/login"), json!(200)),
            (json!("GET"), json!("/email/unsubscribe/{token}"), json!(link.as_u16())),
            (json!("POST"), json!("/rpc/auth/login"), json!(signin.as_u16())),
        ]
    );
}

#[tokio::test]
async fn version_and_the_roles_in_help() {
    let app = TestApp::spawn_without_mailer().await;
    let version = run(keymeter(&app).arg("--version")).await;
    assert_eq!(version.code, Some(0), "{version:?}");
    assert_eq!(version.stdout.trim(), format!("keymeter {}", env!("CARGO_PKG_VERSION")));
    let help = run(keymeter(&app).args(["user", "add", "--help"])).await;
    assert!(help.stdout.contains("[possible values: merchant, admin]"), "{help:?}");
    let mut cmd = keymeter(&app);
    cmd.args(["user", "add", "--email", "ann@example.com", "--role", "root"]);
    let root = run_with(&mut cmd, Some("a long password\n"), Duration::from_secs(30)).await;
    assert_eq!(root.code, Some(2), "{root:?}");
    assert!(root.stderr.contains("possible values: merchant, admin"), "{root:?}");
    let top = run(keymeter(&app).arg("--help")).await;
    assert!(top.stdout.contains("environment variables") && top.stdout.contains("DATABASE_URL"), "{top:?}");
}

/// A deployment that collects JSON log lines gets a refused setting as one too.
#[tokio::test]
async fn with_json_logs_a_startup_error_is_a_json_line() {
    let app = TestApp::spawn_without_mailer().await;
    let r = run(keymeter(&app).arg("serve").env("KEYMETER_LOG_FORMAT", "json").env("KEYMETER_LISTEN", "nowhere")).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    let line: serde_json::Value = serde_json::from_str(r.stderr.trim()).expect("one JSON line");
    assert_eq!(line["level"], "ERROR");
    assert!(line["fields"]["message"].as_str().unwrap().contains("invalid KEYMETER_LISTEN"), "{line}");
}

/// Someone forgot their password: the operator sets a new one, and every session of the
/// account ends (a lost laptop, say, signed in).
#[tokio::test]
async fn user_set_password_sets_a_new_one_and_signs_the_account_out_everywhere() {
    let app = TestApp::spawn().await;
    app.user("fay@example.com", Role::Merchant).await;
    let session = app.signed_in("fay@example.com").await;
    assert_eq!(app.rpc(&session, "keys/list", &[]).await.status(), 200);
    let set = |email: &str| {
        let mut cmd = keymeter(&app);
        cmd.args(["user", "set-password", "--email", email]);
        cmd
    };

    let r = run_with(&mut set("nobody@example.com"), Some("a new long password\n"), Duration::from_secs(30)).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("no account with the email nobody@example.com"), "{r:?}");
    let r = run_with(&mut set("fay@example.com"), Some("short\n"), Duration::from_secs(30)).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("at least 10 characters"), "{r:?}");
    assert_eq!(app.rpc(&session, "keys/list", &[]).await.status(), 200, "a refused reset changes nothing");
    let told = "SELECT count(*) FROM outbound_emails WHERE to_address = 'fay@example.com' \
                AND subject = 'Your keymeter password was changed' AND text_body LIKE '%by the platform''s operator%'";
    assert_eq!(app.count(told).await, 0);

    // She tried her old guesses until sign-in locked her out, from two places.
    let fays = &app.services;
    let locked_out = |password: &'static str| async move {
        matches!(
            accounts::authenticate(fays, "fay@example.com", password, &SignInFrom::client("t")).await,
            Err(services::ServiceError::TooManyAttempts { .. })
        )
    };
    for _ in 0..5 {
        assert!(accounts::authenticate(&app.services, "fay@example.com", "a wrong guess", &SignInFrom::client("t"))
            .await
            .is_err());
    }
    assert!(accounts::authenticate(&app.services, "fay@example.com", "a wrong guess", &SignInFrom::client("u"))
        .await
        .is_err());
    assert!(locked_out(common::PASSWORD).await);

    let r = run_with(&mut set("Fay@Example.com"), Some("a new long password\n"), Duration::from_secs(30)).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("password set for fay@example.com; 1 session signed out"), "{r:?}");
    assert!(r.stdout.contains("failed sign-ins at fay@example.com forgotten: a lockout in force is lifted"), "{r:?}");
    assert_eq!(app.rpc(&session, "keys/list", &[]).await.status(), 401);
    assert_eq!(app.count(told).await, 1, "she hears of it (someone else may have asked)");
    // She can sign in with the new one at once, and only with it.
    assert!(accounts::authenticate(&app.services, "fay@example.com", "a new long password", &SignInFrom::client("t"))
        .await
        .is_ok());
    assert!(accounts::authenticate(&app.services, "fay@example.com", common::PASSWORD, &SignInFrom::client("t"))
        .await
        .is_err());

    // Redis unreachable: the password is set all the same, and the operator is told that a
    // lockout in force stays until its window ends.
    for _ in 0..5 {
        assert!(accounts::authenticate(&app.services, "fay@example.com", "a wrong guess", &SignInFrom::client("t"))
            .await
            .is_err());
    }
    let r = run_with(
        set("fay@example.com").env("REDIS_URL", "redis://127.0.0.1:9"),
        Some("another long password\n"),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("password set for fay@example.com"), "{r:?}");
    assert!(!r.stdout.contains("forgotten"), "{r:?}");
    assert!(r.stderr.contains("a sign-in lockout in force at fay@example.com ends with its window"), "{r:?}");
    assert!(locked_out("another long password").await);
    assert!(accounts::authenticate(
        &app.services,
        "fay@example.com",
        "another long password",
        &SignInFrom::client("v")
    )
    .await
    .is_ok());
}

/// Someone left: the operator disables the account. It cannot sign in (only the right password
/// learns why), every session ends, its API keys keep working until revoked; enabled again, it
/// signs in.
#[tokio::test]
async fn user_disable_signs_the_account_out_until_it_is_enabled() {
    let app = TestApp::spawn().await;
    let gil = app.user("gil@example.com", Role::Merchant).await;
    let (_, secret) = api_keys::create(&app.services.db, gil.id, &KeyName::parse("shop").unwrap()).await.unwrap();
    let session = app.signed_in("gil@example.com").await;
    assert_eq!(app.rpc(&session, "keys/list", &[]).await.status(), 200);
    let switch = |what: &str, email: &str| {
        let mut cmd = keymeter(&app);
        cmd.args(["user", what, "--email", email]);
        cmd
    };

    let r = run(&mut switch("disable", "nobody@example.com")).await;
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("no account with the email nobody@example.com"), "{r:?}");
    assert_eq!(app.rpc(&session, "keys/list", &[]).await.status(), 200, "a refused command changes nothing");

    let r = run(&mut switch("disable", "Gil@Example.com")).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("disabled gil@example.com; 1 session signed out"), "{r:?}");
    assert!(r.stdout.contains("its 1 active API key(s) still work"), "{r:?}");
    assert_eq!(app.rpc(&session, "keys/list", &[]).await.status(), 401);
    let known = format!("SELECT count(*) FROM known_devices WHERE user_id = {} AND forgotten_at IS NULL", gil.id);
    assert_eq!(app.count(&known).await, 0, "its browsers are no longer known");
    // The right password, even from the browser it used, is told why; a guess learns nothing
    // more than at an address without an account.
    for browser in [&session, &common::client()] {
        let right = app.login(browser, "gil@example.com", common::PASSWORD).await;
        assert_eq!(right.status(), 400);
        assert!(right.text().await.unwrap().contains(accounts::ACCOUNT_DISABLED));
    }
    let wrong = app.login(&common::client(), "gil@example.com", "not the password").await;
    let nobody = app.login(&common::client(), "nobody@example.com", "not the password").await;
    assert_eq!((wrong.status(), nobody.status()), (reqwest::StatusCode::BAD_REQUEST, reqwest::StatusCode::BAD_REQUEST));
    assert_eq!(wrong.text().await.unwrap(), nobody.text().await.unwrap(), "a guess learns nothing");
    assert_eq!(app.call("/api/v1/ping", secret.expose()).await.status(), 200, "the key still works");
    let r = run(&mut switch("disable", "gil@example.com")).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("gil@example.com was already disabled"), "{r:?}");

    let r = run(&mut switch("enable", "gil@example.com")).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.contains("enabled gil@example.com"), "{r:?}");
    let back = app.login(&common::client(), "gil@example.com", common::PASSWORD).await;
    assert_eq!(back.status(), 302);
    let r = run(&mut switch("enable", "gil@example.com")).await;
    assert!(r.stdout.contains("gil@example.com was not disabled"), "{r:?}");
}

/// How many rows `query` (a `SELECT count(*) AS n …`) counts, on its own connection.
async fn count_on(database_url: &str, query: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(database_url).await.unwrap();
    diesel::sql_query(query).get_result::<Count>(&mut conn).await.unwrap_or_else(|e| panic!("{query}: {e}")).n
}

/// [`count_on`], polled until it counts `at_least` (or for 10 s); the last count.
async fn count_on_until(database_url: &str, query: &str, at_least: i64) -> i64 {
    let mut counted = 0;
    for _ in 0..100 {
        counted = count_on(database_url, query).await;
        if counted >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    counted
}

/// Managed PostgreSQL services give an app a role that owns its database but is no superuser:
/// the commands and the server work as it (migrations, accounts and keys, usage storage, the
/// daily partitions housekeeping adds), and the server logs no warning or error.
#[tokio::test]
async fn a_database_owner_that_is_not_a_superuser_migrates_and_serves() {
    let pg = env("KEYMETER_TEST_PG");
    let name = format!("owner_{}", uuid::Uuid::new_v4().simple());
    let mut admin = AsyncPgConnection::establish(&format!("{pg}/postgres")).await.unwrap();
    for statement in [
        format!("CREATE ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"),
        format!("CREATE DATABASE {name} OWNER {name}"),
    ] {
        diesel::sql_query(statement).execute(&mut admin).await.unwrap();
    }
    // The tests' PostgreSQL trusts loopback: the role's name is all it takes to sign in as it.
    let (scheme, rest) = pg.split_once("://").unwrap();
    let at = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let url = format!("{scheme}://{name}@{at}/{name}");
    let is_superuser = "SELECT count(*) AS n FROM pg_roles WHERE rolname = current_user AND rolsuper";
    assert_eq!(count_on(&url, is_superuser).await, 0, "connected as the role, not a superuser");
    let mail = std::env::temp_dir().join(format!("keymeter-mail-{name}"));
    let keymeter = || keymeter_on(&url, &name, &mail);

    let migrated = run(keymeter().arg("migrate")).await;
    assert_eq!(migrated.code, Some(0), "{migrated:?}");
    let add = ["user", "add", "--email", "ann@example.com", "--role", "merchant"];
    let added = run_with(keymeter().args(add), Some("a long enough password\n"), Duration::from_secs(60)).await;
    assert_eq!(added.code, Some(0), "{added:?}");
    let created = run(keymeter().args(["key", "create", "--owner", "ann@example.com", "--name", "shop"])).await;
    assert_eq!(created.code, Some(0), "{created:?}");
    let secret = created.stdout.split_whitespace().find(|w| w.starts_with("km_live_")).expect("the secret").to_owned();

    let port = common::processes::free_port();
    let mut serve = keymeter();
    serve.arg("serve").env("KEYMETER_LISTEN", format!("127.0.0.1:{port}")).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut server = serve.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = common::client();
    let mut ready = None;
    for _ in 0..200 {
        if let Ok(res) = http.get(format!("{base}/readyz")).send().await {
            ready = Some((res.status().as_u16(), res.text().await.unwrap()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = ready.expect("the server answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""status":"ok""#), "{body}");
    for _ in 0..3 {
        assert_eq!(http.get(format!("{base}/api/v1/ping")).bearer_auth(&secret).send().await.unwrap().status(), 200);
    }
    let stored = count_on_until(&url, "SELECT count(*) AS n FROM api_key_usage", 3).await;
    assert_eq!(stored, 3, "the calls' usage is stored");
    // The partitions to come are made (by the role that owns the table), before the stop.
    let partitions = "SELECT count(*) AS n FROM pg_inherits WHERE inhparent = 'api_key_usage'::regclass";
    let made = count_on_until(&url, partitions, 3).await;
    assert!(made >= 3, "{made} partitions");
    server.kill().await.unwrap();
    let mut log = String::new();
    server.stderr.take().unwrap().read_to_string(&mut log).await.unwrap();
    // (The browser bundle is not where the tests run: pages are not what this is about.)
    let troubles = log.lines().filter(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && !l.contains("SITE_ROOT"));
    assert_eq!(troubles.collect::<Vec<_>>(), Vec::<&str>::new());

    for statement in [format!("DROP DATABASE {name} WITH (FORCE)"), format!("DROP ROLE {name}")] {
        diesel::sql_query(statement).execute(&mut admin).await.unwrap();
    }
}
