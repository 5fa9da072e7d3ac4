//! The database's upkeep, run beside the usage writer on every instance: the events table's
//! coming partitions are made ahead, and what is past its keeping time goes. Here is the one
//! list of what is kept how long.
//!
//! - Raw usage events (whole daily partitions) and per-minute rollups: the configured usage
//!   retention (`KEYMETER_USAGE_RETENTION_DAYS`). Hourly and daily rollups stay for good
//!   (history, exports, summaries).
//! - Sessions: until they expire, or once unused for
//!   [`SESSION_IDLE`](crate::accounts::sessions::SESSION_IDLE). Known browsers (the new-sign-in
//!   notice): [`KNOWN_FOR`](crate::accounts::known_devices::KNOWN_FOR) after their last sign-in.
//!   Password reset links: a day (they work an hour; the day's count of links an address got
//!   needs them that long).
//! - In-app notifications, quota alert records, and emails sent or given up:
//!   [`RECORDS_KEPT_DAYS`].
//! - Quota requests and quota changes (the audit trail) and monthly summary records (which make
//!   a summary go out once): for good.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use diesel::sql_types::{Array, Date, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tokio::sync::watch;
use uuid::Uuid;

use crate::db::{self, DbPool};
use crate::{ServiceError, ServiceResult};

/// Notifications, quota alert records and finished emails are kept this many days.
pub const RECORDS_KEPT_DAYS: u64 = 90;

/// Raw events and per-minute rollups are kept this many days unless configured
/// (`KEYMETER_USAGE_RETENTION_DAYS`); hourly and daily rollups are kept for good.
pub const DEFAULT_USAGE_RETENTION_DAYS: u32 = 90;

/// How long creating or dropping a partition waits for its lock on the events table. Both need
/// the table to themselves: behind a long read of the events (an analyst's query) they would
/// wait as long as the read, and PostgreSQL queues the writer's inserts behind a waiting lock.
/// Better to give up and try again later.
const PARTITION_LOCK_WAIT: &str = "2s";
/// When housekeeping runs again: after a failure, and then every hour (cheap when there is
/// nothing to do).
const HOUSEKEEPING_RETRY: Duration = Duration::from_secs(600);
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(3600);
/// Partitions are made this many days ahead, so that the writer does not have to make one at
/// midnight (when a long read could hold it up).
const PARTITIONS_AHEAD: u64 = 2;

/// What goes once it is older than [`RECORDS_KEPT_DAYS`] (`$1`, a time): (what, table, which
/// rows). Unsent mail that is still being tried never goes; deleting an email takes its
/// attachments with it, and a monthly summary record keeps its row (its `email_id` turns NULL).
const OLD_RECORDS: [(&str, &str, &str); 3] = [
    ("notifications", "notifications", "created_at < $1"),
    ("quota alerts", "quota_alerts", "period_start < $1"),
    ("emails", "outbound_emails", "sent_at < $1 OR (sent_at IS NULL AND failed_at < $1)"),
];

/// The start of the oldest period whose records are kept, `today` being the current UTC day.
pub fn records_kept_from(today: NaiveDate) -> DateTime<Utc> {
    start_of(today - chrono::Days::new(RECORDS_KEPT_DAYS))
}

fn start_of(day: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_time(chrono::NaiveTime::MIN))
}

/// Creates the partitions of the given days unless they exist, waiting at most
/// [`PARTITION_LOCK_WAIT`] for the events table.
pub(crate) async fn ensure_partitions(conn: &mut AsyncPgConnection, days: &[NaiveDate]) -> ServiceResult<()> {
    conn.transaction::<_, ServiceError, _>(|c| {
        Box::pin(async move {
            diesel::sql_query(format!("SET LOCAL lock_timeout = '{PARTITION_LOCK_WAIT}'")).execute(c).await?;
            diesel::sql_query("SELECT km_ensure_usage_partition(d) FROM unnest($1) AS d")
                .bind::<Array<Date>, _>(days)
                .execute(c)
                .await?;
            Ok(())
        })
    })
    .await
}

pub struct Housekeeping {
    db: DbPool,
    /// Days raw usage events and per-minute rollups are kept.
    usage_retention_days: u32,
}

impl Housekeeping {
    pub fn new(db: DbPool, usage_retention_days: u32) -> Self {
        Self { db, usage_retention_days }
    }

    /// Runs every hour until `stop` changes or its sender is gone.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut outage = crate::outage_log::OutageLog::new("housekeeping");
        loop {
            let wait = match self.apply_today().await {
                Ok(()) => {
                    outage.succeeded();
                    HOUSEKEEPING_EVERY
                }
                Err(e) => {
                    outage.failed(&e, "will retry");
                    HOUSEKEEPING_RETRY
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One pass, today being PostgreSQL's current UTC day: one clock for every instance, where
    /// a node whose own clock ran days ahead would drop days of events early.
    pub async fn apply_today(&self) -> ServiceResult<()> {
        #[derive(diesel::QueryableByName)]
        struct Today {
            #[diesel(sql_type = Date)]
            today: NaiveDate,
        }
        let mut conn = db::conn(&self.db).await?;
        let Today { today } =
            diesel::sql_query("SELECT (now() AT TIME ZONE 'UTC')::date AS today").get_result(&mut conn).await?;
        drop(conn);
        self.apply(today).await
    }

    /// One pass, `today` being the current UTC day.
    pub async fn apply(&self, today: NaiveDate) -> ServiceResult<()> {
        let mut conn = db::conn(&self.db).await?;
        let coming: Vec<NaiveDate> = (0..=PARTITIONS_AHEAD).map(|n| today + chrono::Days::new(n)).collect();
        // Not stopped by a failure here: a drop may succeed where a creation waited too long.
        let made = ensure_partitions(&mut conn, &coming).await;
        // Neither stopped by a failure of the usage part (a long read of the events).
        let usage = self.forget_old_usage(&mut conn, today).await;
        self.forget_old_records(&mut conn, today).await?;
        usage.and(made)
    }

    async fn forget_old_usage(&self, conn: &mut AsyncPgConnection, today: NaiveDate) -> ServiceResult<()> {
        let keep_from = today - chrono::Days::new(self.usage_retention_days as u64);
        #[derive(diesel::QueryableByName)]
        struct Dropped {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            dropped: i32,
        }
        let Dropped { dropped } = conn
            .transaction::<_, ServiceError, _>(|c| {
                Box::pin(async move {
                    diesel::sql_query(format!("SET LOCAL lock_timeout = '{PARTITION_LOCK_WAIT}'")).execute(c).await?;
                    Ok(diesel::sql_query("SELECT km_drop_usage_partitions_before($1) AS dropped")
                        .bind::<Date, _>(keep_from)
                        .get_result(c)
                        .await?)
                })
            })
            .await?;
        if dropped > 0 {
            tracing::info!(days = dropped, %keep_from, "housekeeping: raw usage events of past days dropped");
        }
        // Key by key, along the primary key (key, minute, …): no scan of the whole table.
        let keep_from = start_of(keep_from);
        let keys: Vec<Uuid> = {
            use crate::schema::api_keys;
            use diesel::QueryDsl;
            api_keys::table.select(api_keys::id).load(conn).await?
        };
        let mut minutes = 0;
        for key in keys {
            minutes +=
                diesel::sql_query("DELETE FROM api_key_usage_minute WHERE api_key_id = $1 AND period_start < $2")
                    .bind::<SqlUuid, _>(key)
                    .bind::<Timestamptz, _>(keep_from)
                    .execute(conn)
                    .await?;
        }
        if minutes > 0 {
            tracing::info!(rows = minutes, %keep_from, "housekeeping: per-minute rollups past retention deleted");
        }
        Ok(())
    }

    async fn forget_old_records(&self, conn: &mut AsyncPgConnection, today: NaiveDate) -> ServiceResult<()> {
        let sessions = diesel::sql_query("DELETE FROM sessions WHERE expires_at < now() OR last_seen_at < $1")
            .bind::<Timestamptz, _>(chrono::Utc::now() - crate::accounts::sessions::SESSION_IDLE)
            .execute(conn)
            .await?;
        let devices = diesel::sql_query("DELETE FROM known_devices WHERE last_sign_in_at < $1")
            .bind::<Timestamptz, _>(chrono::Utc::now() - crate::accounts::known_devices::KNOWN_FOR)
            .execute(conn)
            .await?;
        let links = diesel::sql_query("DELETE FROM password_resets WHERE created_at < now() - interval '1 day'")
            .execute(conn)
            .await?;
        let mut forgotten = vec![
            ("expired sessions", sessions),
            ("browsers no longer known", devices),
            ("password reset links", links),
        ];
        let keep_from = records_kept_from(today);
        for (what, table, old) in OLD_RECORDS {
            // Rows someone holds (a user marking notifications read) are left for the next run:
            // deleting many rows while another statement updates several of them, each in its
            // own order, could deadlock.
            let delete = format!(
                "DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} WHERE {old} FOR UPDATE SKIP LOCKED)"
            );
            let n = diesel::sql_query(delete).bind::<Timestamptz, _>(keep_from).execute(conn).await?;
            forgotten.push((what, n));
        }
        forgotten.retain(|(_, n)| *n > 0);
        if !forgotten.is_empty() {
            tracing::info!(?forgotten, %keep_from, "housekeeping: old records deleted");
        }
        Ok(())
    }
}
