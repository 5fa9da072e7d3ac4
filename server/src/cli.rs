//! Operator commands: `keymeter [serve]`, `migrate`, `user add|set-password`,
//! `key create|revoke|list`, `quota set`, `usage set-aside`, `demo seed`, `report monthly`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use services::accounts::{self, Email, Password, Role};
use services::keys::secret::SECRET_PREFIX;
use services::keys::{api_keys, ApiKeyId, ApiKeySecret, KeyCheck, KeyName, Quota, QuotaLimit};
use services::mailer::{self, Mailer};
use services::monthly_report;
use services::quota_changes::{self, set_quota, BurstChange, ChangeSource, QuotaChange};
use services::usage::periods::Month;
use services::usage::writer::{EntryId, UsageWriter};
use services::usage::{demo, rollups};
use services::ServiceError;

use crate::config::{redact_url, Config};
use crate::startup::{self, Application};

#[derive(Parser)]
#[command(
    name = "keymeter",
    version,
    about = "API-key usage metering: server and operator commands",
    after_help = "Configuration comes from environment variables (README.md, \"Configuration\"): \
                  DATABASE_URL, REDIS_URL, SMTP_URL, KEYMETER_LISTEN, KEYMETER_PUBLIC_URL and others; \
                  a bad or empty value is refused naming its variable."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the web app and the metered API (the default).
    Serve,
    /// Apply pending database migrations.
    Migrate,
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage quotas.
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Demo data for local use.
    #[command(subcommand)]
    Demo(DemoCommand),
    /// Usage reports.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Usage storage.
    #[command(subcommand)]
    Usage(UsageCommand),
}

#[derive(Subcommand)]
enum UsageCommand {
    /// List the usage PostgreSQL refused to store (set aside by the writers so that the usage
    /// behind it is stored), with PostgreSQL's error.
    SetAside {
        /// Once the cause is fixed: put it all back in the usage stream, for the servers'
        /// writers to store (an event already stored is not stored twice).
        #[arg(long)]
        replay: bool,
    },
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Send the monthly usage summary to every key owner who has not had it (the server does
    /// this by itself shortly after each month begins).
    Monthly {
        /// The month, YYYY-MM (the previous month if omitted).
        #[arg(long)]
        month: Option<String>,
        /// Send again to owners who already had it.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account; the password is read from standard input (typed without echo on a
    /// terminal).
    Add {
        /// The account's email address (its sign-in name, where its mail goes).
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "merchant", value_parser = ["merchant", "admin"])]
        role: String,
    },
    /// Set a new password for an account (someone who forgot theirs) and sign it out
    /// everywhere; the password is read from standard input, as for `add`.
    SetPassword {
        /// The account's email address.
        #[arg(long)]
        email: String,
    },
    /// Stop an account from signing in (someone who left) and sign it out everywhere; its API
    /// keys keep working until revoked (`key revoke`).
    Disable {
        /// The account's email address.
        #[arg(long)]
        email: String,
    },
    /// Let a disabled account sign in again.
    Enable {
        /// The account's email address.
        #[arg(long)]
        email: String,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create a key for an account and print its secret (shown only this once).
    Create {
        #[arg(long)]
        owner: String,
        #[arg(long)]
        name: String,
    },
    /// Revoke a key by id (a UUID, see `key list`), not by its secret.
    Revoke { id: String },
    /// List an account's keys: id, status, prefix, name.
    List {
        #[arg(long)]
        owner: String,
    },
}

#[derive(Subcommand)]
enum QuotaCommand {
    /// Set a key's limits; they apply to its very next request. Unlike the admin form, an
    /// hourly limit above the daily one is accepted (the day window then blocks first).
    Set {
        /// The key's id (a UUID, see `key list`), not its secret.
        #[arg(long)]
        key: String,
        // Negative numbers are read as numbers, so that they get the limit's own message
        // ("must be positive") rather than clap's "unexpected argument '-1'".
        #[arg(long, allow_negative_numbers = true)]
        per_hour: i64,
        #[arg(long, allow_negative_numbers = true)]
        per_day: i64,
        /// Requests per second allowed in a burst (omit to keep the key's current burst limit).
        #[arg(long, allow_negative_numbers = true)]
        burst: Option<i64>,
        /// Remove the key's burst limit.
        #[arg(long, conflicts_with = "burst")]
        no_burst: bool,
        /// Why, for the audit trail.
        #[arg(long, default_value = "set by an operator")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum DemoCommand {
    /// Create the demo admin and merchant, a demo key with 30 days of usage history, unless
    /// they exist.
    Seed {
        /// Keep the demo key's secret in this file (for the demo traffic of `make run`).
        #[arg(long)]
        secret_file: Option<std::path::PathBuf>,
    },
}

/// How long `report monthly` spends sending what it queued (a send still running then is cut
/// short); what is left stays queued for a server's mail sender, so a relay that never answers
/// cannot hold the command.
const MAIL_DEADLINE: Duration = Duration::from_secs(30);

pub async fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match Config::from_env() {
        Ok(config) => {
            crate::telemetry::init(config.log_format, &config.log_filter);
            for var in &config.empty_vars {
                tracing::warn!(variable = %var, "set but empty: taken as unset (its default applies)");
            }
            dispatch(&config, cli.command.unwrap_or(Command::Serve)).await
        }
        Err(err) => Err(err.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Not eprintln!: a closed stderr must not turn an error into a panic. A collector
            // reading JSON lines gets this one as JSON too (the logger may not exist yet).
            let json = std::env::var("KEYMETER_LOG_FORMAT").is_ok_and(|f| f.trim() == "json");
            let line = if json {
                serde_json::json!({ "level": "ERROR", "fields": { "message": error_chain(&err) } }).to_string()
            } else {
                format!("error: {}", error_chain(&err))
            };
            let _ = writeln!(std::io::stderr(), "{line}");
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, as `{err:#}` joins them, but without a cause its error already
/// spelled out (`ServiceError::Redis` shows the `RedisError` it wraps, which is also its
/// source: the text came twice).
fn error_chain(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain().map(ToString::to_string) {
        if line.is_empty() {
            line = cause;
        } else if !line.ends_with(&cause) {
            line = format!("{line}: {cause}");
        }
    }
    line
}

/// One line on standard output. A write error (a closed pipe: `keymeter … | head -1`) is an
/// error of the command, not a panic as with `println!`.
fn out(line: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_fmt(line)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush())
        .context("cannot write to standard output")
}

macro_rules! say {
    ($($arg:tt)*) => { out(format_args!($($arg)*)) };
}

/// A key id given on the command line. Anything else is refused without echoing it: a key
/// secret pasted by mistake would otherwise land in the terminal's scrollback and logs.
fn key_id(raw: &str, what: &str) -> anyhow::Result<ApiKeyId> {
    if let Ok(id) = ApiKeyId::parse(raw) {
        return Ok(id);
    }
    let hint = "a UUID, as `keymeter key list --owner <email>` shows";
    if raw.contains(SECRET_PREFIX) || raw.trim_start().starts_with("km_") {
        bail!("{what} looks like a key secret ({SECRET_PREFIX}…), which is not printed here; give the key's id instead ({hint})");
    }
    bail!("{what} is not a key id ({hint})")
}

/// Runs one command; each group of subcommands has a function of its own below.
async fn dispatch(config: &Config, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve(config).await,
        Command::Migrate => migrate(config).await,
        Command::User(command) => user(config, command).await,
        Command::Key(command) => key(config, command).await,
        Command::Quota(command) => quota(config, command).await,
        Command::Demo(DemoCommand::Seed { secret_file }) => seed_demo(config, secret_file.as_deref()).await,
        Command::Usage(UsageCommand::SetAside { replay }) => set_aside(config, replay).await,
        Command::Report(command) => report(config, command).await,
    }
}

/// `keymeter migrate`: applies the migrations this binary has and the database lacks.
async fn migrate(config: &Config) -> anyhow::Result<()> {
    let applied = services::db::run_migrations(&config.database_url)
        .await
        .with_context(|| format!("migrating {}", redact_url(&config.database_url)))?;
    match applied.as_slice() {
        [] => say!("the database is up to date: no migration to apply"),
        names => say!("applied {} migration(s): {}", names.len(), names.join(", ")),
    }
}

/// `keymeter user …`: accounts.
async fn user(config: &Config, command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add { email, role } => {
            let email = Email::parse(&email).context("--email")?;
            let role = Role::parse(&role)?;
            let password = Password::parse(&read_password()?)?;
            let db = startup::connect_database(config).await?;
            let user = accounts::create_user(&db, &email, &password, role).await?;
            say!("created {} account {} (id {})", role.as_str(), user.email, user.id)
        }
        UserCommand::SetPassword { email } => {
            let email = Email::parse(&email).context("--email")?;
            let password = Password::parse(&read_password()?)?;
            let db = startup::connect_database(config).await?;
            let (user, ended) = match accounts::reset_password(&db, &email, &password, &config.public_url).await {
                Err(ServiceError::NotFound) => bail!("no account with the email {}", email.as_str()),
                other => other?,
            };
            say!("password set for {}; {} signed out", user.email, sessions(ended))?;
            lift_sign_in_lockout(config, &user.email).await
        }
        UserCommand::Disable { email } => {
            let email = Email::parse(&email).context("--email")?;
            let db = startup::connect_database(config).await?;
            let done = match accounts::set_disabled(&db, &email, true).await {
                Err(ServiceError::NotFound) => bail!("no account with the email {}", email.as_str()),
                other => other?,
            };
            let user = &done.user;
            if done.changed {
                say!("disabled {}; {} signed out", user.email, sessions(done.sessions_ended))?;
            } else {
                say!("{} was already disabled", user.email)?;
            }
            let active =
                api_keys::list_for_owner(&db, user.id).await?.iter().filter(|k| k.revoked_at.is_none()).count();
            match active {
                0 => Ok(()),
                n => say!(
                    "its {n} active API key(s) still work: `keymeter key list --owner {}` lists them, `keymeter key revoke <id>` stops one",
                    user.email
                ),
            }
        }
        UserCommand::Enable { email } => {
            let email = Email::parse(&email).context("--email")?;
            let db = startup::connect_database(config).await?;
            match accounts::set_disabled(&db, &email, false).await {
                Err(ServiceError::NotFound) => bail!("no account with the email {}", email.as_str()),
                Ok(done) if !done.changed => say!("{} was not disabled", done.user.email),
                Ok(done) => say!("enabled {}: it can sign in again", done.user.email),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// `keymeter key …`: API keys.
async fn key(config: &Config, command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create { owner, name } => {
            let email = Email::parse(&owner).context("--owner")?;
            let name = KeyName::parse(&name)?;
            let db = startup::connect_database(config).await?;
            let user = accounts::find_user_by_email(&db, &email)
                .await?
                .ok_or_else(|| anyhow!("no account with the email {}", email.as_str()))?;
            let (key, secret) = api_keys::create(&db, user.id, &name).await?;
            let _ = writeln!(
                std::io::stderr(),
                "created key {} ({}) for {}; the secret is shown only this once:",
                key.id,
                key.name,
                user.email
            );
            let Err(e) = say!("{}", secret.expose()) else {
                return Ok(());
            };
            // Nobody can ever know this secret, so the key is of no use to anyone: take it back
            // rather than leave an active key behind.
            let id = key.id;
            match api_keys::withdraw_unseen(&db, id, &config.public_url).await {
                Ok(()) => bail!(
                    "the secret of the new key {id} could not be written ({e:#}), so the key was revoked; \
                     run the command again with somewhere to write the secret"
                ),
                Err(revoke) => bail!(
                    "key {id} was created, but its secret could not be written ({e:#}) and cannot be shown again, \
                     and revoking it failed ({revoke}): revoke it with `keymeter key revoke {id}`"
                ),
            }
        }
        KeyCommand::Revoke { id } => {
            let id = key_id(&id, "the key to revoke")?;
            // PostgreSQL alone: a leaked key can be revoked while Redis is down.
            let db = startup::connect_database(config).await?;
            let (key, revoked_now) = api_keys::revoke(&db, id, &config.public_url).await.map_err(|e| match e {
                services::ServiceError::NotFound => anyhow!("no key with id {id}"),
                other => other.into(),
            })?;
            match (revoked_now, key.revoked_at) {
                (false, Some(at)) => {
                    say!("key {} ({}) was already revoked, on {} (unchanged)", key.id, key.name, at.to_rfc3339())
                }
                _ => say!("revoked key {} ({})", key.id, key.name),
            }
        }
        KeyCommand::List { owner } => {
            let email = Email::parse(&owner).context("--owner")?;
            let db = startup::connect_database(config).await?;
            let user = accounts::find_user_by_email(&db, &email)
                .await?
                .ok_or_else(|| anyhow!("no account with the email {}", email.as_str()))?;
            for key in api_keys::list_for_owner(&db, user.id).await? {
                let status = if key.revoked_at.is_some() { "revoked" } else { "active" };
                say!("{}\t{status}\t{}\t{}", key.id, key.prefix, key.name)?;
            }
            Ok(())
        }
    }
}

/// `keymeter quota …`: a key's limits.
async fn quota(config: &Config, command: QuotaCommand) -> anyhow::Result<()> {
    match command {
        QuotaCommand::Set { key, per_hour, per_day, burst, no_burst, reason } => {
            let id = key_id(&key, "--key")?;
            let per_hour = QuotaLimit::new(per_hour).context("--per-hour")?;
            let per_day = QuotaLimit::new(per_day).context("--per-day")?;
            let burst = match (burst, no_burst) {
                (Some(b), _) => BurstChange::Set(QuotaLimit::burst(b).context("--burst")?),
                (None, true) => BurstChange::Remove,
                (None, false) => BurstChange::Keep,
            };
            let services = startup::connect(config).await?;
            let set = quota_changes::set_by_operator(&services, id, per_hour, per_day, burst, &reason).await;
            let (quota, changed) = set.map_err(|e| match e {
                services::ServiceError::NotFound => anyhow!("no key with id {id}"),
                services::ServiceError::Conflict(why) => anyhow!("the quota of key {id} was not changed: {why}"),
                other => other.into(),
            })?;
            say!(
                "quota of {id}: {}/hour, {}/day, {}{}",
                quota.per_hour.get(),
                quota.per_day.get(),
                match (quota.burst_per_second, burst) {
                    (Some(b), BurstChange::Keep) => format!("burst {}/s (kept)", b.get()),
                    (Some(b), _) => format!("burst {}/s", b.get()),
                    (None, _) => "no burst limit".to_owned(),
                },
                if changed { "" } else { " (unchanged: it already was)" }
            )
        }
    }
}

/// `keymeter report …`: the monthly summary on demand.
async fn report(config: &Config, command: ReportCommand) -> anyhow::Result<()> {
    match command {
        ReportCommand::Monthly { month, force } => {
            let month = match month {
                Some(raw) => Month::parse(&raw).context("--month")?,
                None => Month::containing(chrono::Utc::now()).previous(),
            };
            // Mail settings first: a mailer that cannot be built must not leave summaries
            // recorded as sent and queued behind it.
            let mailer = Mailer::with_smtp_ca(
                config.smtp_url.as_deref(),
                config.smtp_ca_file.as_deref(),
                config.mail_dir.clone(),
                &config.mail_from,
            )?;
            let services = startup::connect(config).await?;
            let outcome = monthly_report::send_monthly_reports(&services, month, force).await?;
            say!(
                "monthly summary for {month}: queued for {} owner(s), {} already had it{}{}",
                outcome.sent,
                outcome.already_sent,
                if outcome.already_sent > 0 && !force { " (--force sends again)" } else { "" },
                match outcome.opted_out {
                    0 => String::new(),
                    // Off now, or turned on again only after the month ended.
                    n => format!("; {n} left out (the summary is off, or was when the month ended)"),
                }
            )?;
            // Deliver now rather than waiting for a server's mail sender: each message once,
            // for a bounded time.
            let queued = &outcome.email_ids;
            mailer.deliver_now(&services.db, queued, Instant::now() + MAIL_DEADLINE).await?;
            let unsent = mailer::unsent(&services.db, queued).await?;
            services.usage.shutdown().await;
            if queued.is_empty() {
                return Ok(());
            }
            say!("mail: {} of {} sent via {}", queued.len() - unsent.len(), queued.len(), mailer.describe())?;
            for m in &unsent {
                let fate = if m.given_up { " (refused for good: given up)" } else { "" };
                say!("  not sent to {}: {}{fate}", m.to, m.error)?;
            }
            if !unsent.is_empty() {
                bail!(
                    "{} of {} summary email(s) could not be sent now; see /admin/mail: a running keymeter \
                     server's mail sender retries the ones still queued, and an admin can send a given-up one again",
                    unsent.len(),
                    queued.len()
                );
            }
            Ok(())
        }
    }
}

/// Entries listed by `usage set-aside` (the oldest; the count says how many there are).
const SET_ASIDE_SHOWN: usize = 50;

/// After a new password: failed sign-ins at the address (kept in Redis) are forgotten, so
/// that its owner can sign in at once. Redis is not needed to set a password: if it cannot be
/// reached, a lockout in force simply ends with its window, and the operator is told.
async fn lift_sign_in_lockout(config: &Config, email: &str) -> anyhow::Result<()> {
    let lifted = async {
        let redis = startup::connect_redis(config).await?;
        anyhow::Ok(accounts::lift_sign_in_lockout(&redis, &config.redis_namespace, email).await?)
    };
    match tokio::time::timeout(Duration::from_secs(5), lifted).await {
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(_)) => say!("failed sign-ins at {email} forgotten: a lockout in force is lifted"),
        outcome => {
            let why = match outcome {
                Ok(Err(e)) => format!("{e:#}"),
                _ => "Redis did not answer within 5 s".to_owned(),
            };
            tracing::warn!("{why}: a sign-in lockout in force at {email} ends with its window (within 15 minutes)");
            Ok(())
        }
    }
}

async fn set_aside(config: &Config, replay: bool) -> anyhow::Result<()> {
    use services::usage::set_aside;
    let redis = startup::connect_redis(config).await?;
    let namespace = &config.redis_namespace;
    let entries = |n: u64| if n == 1 { "entry" } else { "entries" };
    if replay {
        let done = set_aside::replay(&redis, namespace).await?;
        if done.entries == 0 && done.unreadable == 0 {
            return say!("no usage set aside: nothing to replay");
        }
        if done.entries > 0 {
            say!(
                "{} set-aside {} ({} event(s)) put back in the usage stream; a running server's writer \
                 stores them (what PostgreSQL still refuses is set aside again)",
                done.entries,
                entries(done.entries),
                done.events
            )?;
        }
        if done.unreadable > 0 {
            say!(
                "{} unreadable {} left set aside: no writer could store them",
                done.unreadable,
                entries(done.unreadable)
            )?;
        }
        return Ok(());
    }
    let (total, shown) = set_aside::list(&redis, namespace, SET_ASIDE_SHOWN).await?;
    if total == 0 {
        return say!("no usage set aside");
    }
    say!("{total} {} set aside (the oldest first):", entries(total))?;
    for entry in &shown {
        let at = EntryId::parse(&entry.id).and_then(|id| chrono::DateTime::from_timestamp_millis(id.added_ms()));
        let at = at.map_or_else(|| entry.id.clone(), |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        let events = match &entry.events {
            Ok(events) => format!("{} event(s)", events.len()),
            Err(why) => format!("unreadable ({why})"),
        };
        say!("{at}\t{events}\t{}", entry.error)?;
    }
    if total > shown.len() as u64 {
        say!("… and {} more", total - shown.len() as u64)?;
    }
    say!("fix the cause, then `keymeter usage set-aside --replay` puts them back")
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    tracing::info!(address = %app.local_addr(), "keymeter listening");
    if let Some(at) = app.metrics_addr() {
        tracing::info!(address = %at, "metrics at /metrics");
    }
    app.run_until_stopped().await?;
    Ok(())
}

/// "1 session", "3 sessions".
fn sessions(n: usize) -> String {
    format::counted(i64::try_from(n).unwrap_or(i64::MAX), "session", "sessions")
}

/// One line from stdin: a prompt-free pipe, or typed at a terminal without echo.
fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        // Off before the prompt shows, so nothing typed after it appears.
        let _quiet = EchoOff::stdin().context("turning off the terminal's echo for the password")?;
        let mut stderr = std::io::stderr();
        let _ = write!(stderr, "password: ").and_then(|()| stderr.flush());
        stdin.lock().read_line(&mut line).context("reading the password from stdin")?;
    } else {
        stdin.lock().read_line(&mut line).context("reading the password from stdin")?;
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// The terminal on stdin without echo (the newline still shows) until dropped.
struct EchoOff {
    #[cfg(unix)]
    saved: libc::termios,
}

impl EchoOff {
    #[cfg(unix)]
    fn stdin() -> std::io::Result<Self> {
        let mut saved = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: tcgetattr fills the termios it is given, or fails and it is not read.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, saved.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: initialised by the successful tcgetattr above.
        let saved = unsafe { saved.assume_init() };
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: a valid termios for the descriptor it came from.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &quiet) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { saved })
    }

    #[cfg(not(unix))]
    fn stdin() -> std::io::Result<Self> {
        Ok(Self {})
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings read from the same descriptor.
        #[cfg(unix)]
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved);
        }
    }
}

pub const DEMO_ADMIN: (&str, &str) = ("admin@keymeter.local", "admin-demo-password");
pub const DEMO_MERCHANT: (&str, &str) = ("merchant@keymeter.local", "merchant-demo-password");

async fn seed_demo(config: &Config, secret_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let services = startup::connect(config).await?;
    let mut merchant = None;
    for ((email, password), role) in [(DEMO_ADMIN, Role::Admin), (DEMO_MERCHANT, Role::Merchant)] {
        let email = Email::parse(email)?;
        let user = match accounts::find_user_by_email(&services.db, &email).await? {
            Some(user) => user,
            None => accounts::create_user(&services.db, &email, &Password::parse(password)?, role).await?,
        };
        say!("  {:<8} {}  password: {}", role.as_str(), user.email, password)?;
        if role == Role::Merchant {
            merchant = Some(user);
        }
    }
    let merchant = merchant.ok_or_else(|| anyhow!("demo merchant missing"))?;

    // The demo key: the one whose secret the file holds, or a new one.
    let known = match secret_file.and_then(|p| std::fs::read_to_string(p).ok()) {
        Some(text) => match ApiKeySecret::parse(text.trim()) {
            Ok(secret) => match services.keys.check(&secret).await? {
                KeyCheck::Active(key) => Some(key.id),
                _ => None,
            },
            Err(_) => None,
        },
        None => api_keys::list_for_owner(&services.db, merchant.id)
            .await?
            .into_iter()
            .find(|k| k.name == "Demo key" && k.revoked_at.is_none())
            .map(|k| k.id),
    };
    let key_id = match known {
        Some(id) => {
            say!("  demo key {id}")?;
            id
        }
        None => {
            let (key, secret) = api_keys::create(&services.db, merchant.id, &KeyName::parse("Demo key")?).await?;
            let quota =
                Quota { per_hour: QuotaLimit::new(5_000)?, per_day: QuotaLimit::new(50_000)?, burst_per_second: None };
            let change = QuotaChange { actor: None, source: ChangeSource::Operator, reason: "demo key" };
            set_quota(&services, key.id, &quota, &change).await?;
            // As old as its history, so that the last month's summary covers it.
            api_keys::backdate(&services.db, key.id, chrono::Utc::now() - chrono::Duration::days(30)).await?;
            if let Some(path) = secret_file {
                write_secret_file(path, secret.expose())?;
            }
            say!("  demo key {} (shown once): {}", key.id, secret.expose())?;
            key.id
        }
    };

    if !rollups::has_usage(&services.db, key_id.0).await? {
        let today = chrono::Utc::now().date_naive().and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
        let events = demo::history(key_id.0, today.timestamp_millis(), 30, 3_000, 2026);
        let mut writer = UsageWriter::new(&services);
        for chunk in events.chunks(10_000) {
            writer.write(chunk).await?;
        }
        say!("  seeded 30 days of demo usage ({} calls)", events.len())?;
    }
    services.usage.shutdown().await;
    Ok(())
}

/// Writes the secret readable by the owner only.
fn write_secret_file(path: &std::path::Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{secret}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_line_names_each_cause_once() {
        use deadpool_redis::redis;
        let redis = redis::RedisError::from((redis::ErrorKind::ReadOnly, "READONLY", "no writes on a replica".into()));
        let err =
            anyhow::Error::from(services::ServiceError::Redis(redis)).context("Redis at redis://r:6379 is unreachable");
        let line = error_chain(&err);
        assert_eq!(line.matches("no writes on a replica").count(), 1, "{line}");
        assert!(line.starts_with("Redis at redis://r:6379 is unreachable: Redis error: "), "{line}");
        let io = anyhow::Error::from(std::io::Error::other("disk full")).context("cannot write the export");
        assert_eq!(error_chain(&io), "cannot write the export: disk full");
    }
}
