//! Operator commands: `keymeter [serve]`, `migrate`, `user add`, `key create|revoke|list`, `quota set`,
//! `demo seed`, `report monthly`.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand};
use services::accounts::{self, Email, Password, Role};
use services::keys::{
    api_keys, set_quota, ApiKeyId, ApiKeySecret, ChangeSource, KeyCheck, KeyName, Quota, QuotaChange, QuotaLimit,
};
use services::mailer::Mailer;
use services::monthly_report;
use services::usage::reports::Month;
use services::usage::writer::UsageWriter;
use services::usage::{demo, reports};

use crate::config::{redact_url, Config};
use crate::startup::{self, Application};

#[derive(Parser)]
#[command(name = "keymeter", about = "API-key usage metering: server and operator commands")]
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
    /// Create an account; the password is read from standard input.
    Add {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "merchant")]
        role: String,
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
    /// Revoke a key by id.
    Revoke { id: String },
    /// List an account's keys: id, status, prefix, name.
    List {
        #[arg(long)]
        owner: String,
    },
}

#[derive(Subcommand)]
enum QuotaCommand {
    /// Set a key's limits; they apply to its very next request.
    Set {
        #[arg(long)]
        key: String,
        #[arg(long)]
        per_hour: i64,
        #[arg(long)]
        per_day: i64,
        /// Requests per second allowed in a burst (omit for no burst limit).
        #[arg(long)]
        burst: Option<i64>,
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

pub async fn run() -> ExitCode {
    crate::telemetry::init();
    let cli = Cli::parse();
    match dispatch(cli.command.unwrap_or(Command::Serve)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    match command {
        Command::Serve => serve(&config).await,
        Command::Migrate => {
            services::db::run_migrations(&config.database_url)
                .await
                .with_context(|| format!("migrating {}", redact_url(&config.database_url)))?;
            println!("migrations applied");
            Ok(())
        }
        Command::User(UserCommand::Add { email, role }) => {
            let email = Email::parse(&email)?;
            let role = Role::parse(&role)?;
            let password = Password::parse(&read_password()?)?;
            let services = startup::connect(&config).await?;
            let user = accounts::create_user(&services.db, &email, &password, role).await?;
            println!("created {} account {} (id {})", role.as_str(), user.email, user.id);
            Ok(())
        }
        Command::Key(KeyCommand::Create { owner, name }) => {
            let email = Email::parse(&owner)?;
            let name = KeyName::parse(&name)?;
            let services = startup::connect(&config).await?;
            let user = accounts::find_user_by_email(&services.db, &email)
                .await?
                .ok_or_else(|| anyhow!("no account with the email {}", email.as_str()))?;
            let (key, secret) = api_keys::create(&services.db, user.id, &name).await?;
            eprintln!("created key {} ({}) for {}; the secret is shown only this once:", key.id, key.name, user.email);
            println!("{}", secret.expose());
            Ok(())
        }
        Command::Key(KeyCommand::Revoke { id }) => {
            let id = ApiKeyId::parse(&id).map_err(|_| anyhow!("{id:?} is not a key id"))?;
            let services = startup::connect(&config).await?;
            let key = api_keys::revoke(&services.db, id).await.map_err(|e| match e {
                services::ServiceError::NotFound => anyhow!("no key with id {id}"),
                other => other.into(),
            })?;
            println!("revoked key {} ({})", key.id, key.name);
            Ok(())
        }
        Command::Key(KeyCommand::List { owner }) => {
            let email = Email::parse(&owner)?;
            let services = startup::connect(&config).await?;
            let user = accounts::find_user_by_email(&services.db, &email)
                .await?
                .ok_or_else(|| anyhow!("no account with the email {}", email.as_str()))?;
            for key in api_keys::list_for_owner(&services.db, user.id).await? {
                let status = if key.revoked_at.is_some() { "revoked" } else { "active" };
                println!("{}\t{status}\t{}\t{}", key.id, key.prefix, key.name);
            }
            Ok(())
        }
        Command::Quota(QuotaCommand::Set { key, per_hour, per_day, burst, reason }) => {
            let id = ApiKeyId::parse(&key).map_err(|_| anyhow!("{key:?} is not a key id"))?;
            let quota = Quota {
                per_hour: QuotaLimit::new(per_hour).context("--per-hour")?,
                per_day: QuotaLimit::new(per_day).context("--per-day")?,
                burst_per_second: burst.map(QuotaLimit::burst).transpose().context("--burst")?,
            };
            let services = startup::connect(&config).await?;
            let change = QuotaChange { actor: None, source: ChangeSource::Operator, reason: &reason };
            set_quota(&services, id, &quota, &change).await.map_err(|e| match e {
                services::ServiceError::NotFound => anyhow!("no key with id {id}"),
                other => other.into(),
            })?;
            println!(
                "quota of {id}: {per_hour}/hour, {per_day}/day{}",
                burst.map(|b| format!(", burst {b}/s")).unwrap_or_default()
            );
            Ok(())
        }
        Command::Demo(DemoCommand::Seed { secret_file }) => seed_demo(&config, secret_file.as_deref()).await,
        Command::Report(ReportCommand::Monthly { month, force }) => {
            let month = match month {
                Some(raw) => Month::parse(&raw).context("--month")?,
                None => Month::containing(chrono::Utc::now()).previous(),
            };
            let services = startup::connect(&config).await?;
            let outcome = monthly_report::send_monthly_reports(&services, month, force).await?;
            println!(
                "monthly summary for {month}: queued for {} owner(s), {} already had it{}",
                outcome.sent,
                outcome.already_sent,
                if outcome.already_sent > 0 && !force { " (--force sends again)" } else { "" }
            );
            // Deliver now rather than waiting for a server's mail sender.
            let mailer = Mailer::with_smtp_ca(
                config.smtp_url.as_deref(),
                config.smtp_ca_file.as_deref(),
                config.mail_dir.clone(),
                &config.mail_from,
            )?;
            let mut tried = 0;
            while tried < 10_000 {
                match mailer.deliver_due(&services.db).await? {
                    0 => break,
                    n => tried += n,
                }
            }
            println!("mail: {} message(s) handed to {}", tried, mailer.describe());
            services.usage.shutdown().await;
            Ok(())
        }
    }
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    tracing::info!(address = %app.local_addr(), "keymeter listening");
    app.run_until_stopped().await?;
    Ok(())
}

/// One line from stdin (a prompt-free pipe, or typed at a terminal).
fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password: ");
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line).context("reading the password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
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
        println!("  {:<8} {}  password: {}", role.as_str(), user.email, password);
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
            println!("  demo key {id}");
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
            // The demo traffic nears the hourly quota every hour: email only when a quota runs out.
            let mut conn = services::db::conn(&services.db).await?;
            services::alerts::set_email_thresholds(&mut conn, key.id, services::alerts::AlertThresholds::parse("100")?)
                .await?;
            drop(conn);
            if let Some(path) = secret_file {
                write_secret_file(path, secret.expose())?;
            }
            println!("  demo key {} (shown once): {}", key.id, secret.expose());
            key.id
        }
    };

    if !reports::has_usage(&services.db, key_id.0).await? {
        let today = chrono::Utc::now().date_naive().and_hms_opt(0, 0, 0).unwrap_or_default().and_utc();
        let events = demo::history(key_id.0, today.timestamp_millis(), 30, 3_000, 2026);
        let mut writer = UsageWriter::new(&services, config.usage_retention_days);
        for chunk in events.chunks(10_000) {
            writer.write(chunk).await?;
        }
        println!("  seeded 30 days of demo usage ({} calls)", events.len());
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
