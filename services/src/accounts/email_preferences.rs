//! Which optional emails an account gets: for now, the monthly usage summary. Its owner stops
//! it in the app, or from the summary itself without signing in: every summary links to
//! `/email/unsubscribe/<token>` (and names it in `List-Unsubscribe`), the token being the
//! account's random `email_token`.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::{self, DbPool};
use crate::public_url::PublicUrl;
use crate::schema::users;
use crate::{ServiceError, ServiceResult};

/// The page that stops an account's monthly summary (GET shows it, POST stops it).
pub fn unsubscribe_url(public_url: &PublicUrl, token: Uuid) -> String {
    public_url.link(&format!("/email/unsubscribe/{token}"))
}

pub async fn gets_monthly_summary(db: &DbPool, user_id: i64) -> ServiceResult<bool> {
    let mut conn = db::conn(db).await?;
    Ok(users::table.find(user_id).select(users::monthly_summary).get_result(&mut conn).await?)
}

/// Turned on again, it starts with the months that end from now on: not with every month
/// missed while it was off. It also gets a new link token: the links of the summaries sent so
/// far stop working, so whoever was forwarded one (and may have used it) cannot stop it again.
pub async fn set_monthly_summary(db: &DbPool, user_id: i64, on: bool) -> ServiceResult<()> {
    let mut conn = db::conn(db).await?;
    conn.transaction::<_, ServiceError, _>(|conn| {
        Box::pin(async move {
            diesel::sql_query(
                "UPDATE users SET monthly_summary = $2, \
                 monthly_summary_since = CASE WHEN $2 AND NOT monthly_summary THEN now() ELSE monthly_summary_since END, \
                 email_token = CASE WHEN $2 AND NOT monthly_summary THEN gen_random_uuid() ELSE email_token END \
                 WHERE id = $1",
            )
            .bind::<diesel::sql_types::BigInt, _>(user_id)
            .bind::<diesel::sql_types::Bool, _>(on)
            .execute(conn)
            .await?;
            if !on {
                withdraw_unsent_summaries(conn, user_id).await?;
            }
            Ok(())
        })
    })
    .await
}

/// Takes the owner's summaries that are still waiting in the outbox (the mail server was down
/// when they were due, say) out of it: stopped means no further summary, not one more. The
/// month stays recorded as done, so turning the summary on again does not bring it back. One
/// being sent at this very moment still goes; given-up ones stay on the admins' mail page.
async fn withdraw_unsent_summaries(conn: &mut AsyncPgConnection, user_id: i64) -> ServiceResult<()> {
    let withdrawn = diesel::sql_query(
        "DELETE FROM outbound_emails WHERE sent_at IS NULL AND failed_at IS NULL \
         AND id IN (SELECT email_id FROM monthly_reports WHERE user_id = $1)",
    )
    .bind::<diesel::sql_types::BigInt, _>(user_id)
    .execute(conn)
    .await?;
    if withdrawn > 0 {
        tracing::info!(user_id, withdrawn, "monthly summary stopped: its unsent summaries were withdrawn");
    }
    Ok(())
}

/// The address the link with `token` is for, and whether its summary is still on.
pub async fn account_of_token(db: &DbPool, token: Uuid) -> ServiceResult<(String, bool)> {
    let mut conn = db::conn(db).await?;
    Ok(users::table
        .filter(users::email_token.eq(token))
        .select((users::email, users::monthly_summary))
        .get_result(&mut conn)
        .await?)
}

/// An address shown to whoever holds a link (a forwarded summary): enough for its owner to
/// recognise, not the whole of it (`an***@example.com`).
pub fn masked(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            // Never the whole of a short name.
            let shown: String = local.chars().take(if local.chars().count() > 2 { 2 } else { 1 }).collect();
            format!("{shown}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

/// Stops the monthly summary of the account the link with `token` belongs to; returns its
/// address. Again is no error (a mail reader's one-click POST may come twice).
pub async fn stop_monthly_summary_by_token(db: &DbPool, token: Uuid) -> ServiceResult<String> {
    let mut conn = db::conn(db).await?;
    let email = conn
        .transaction::<_, ServiceError, _>(|conn| {
            Box::pin(async move {
                let (user_id, email): (i64, String) = diesel::update(users::table.filter(users::email_token.eq(token)))
                    .set(users::monthly_summary.eq(false))
                    .returning((users::id, users::email))
                    .get_result(conn)
                    .await?;
                withdraw_unsent_summaries(conn, user_id).await?;
                Ok(email)
            })
        })
        .await?;
    tracing::info!("monthly summary stopped from its email link");
    Ok(email)
}

/// Of `owners`, those who get the summary of a month that ended at `month_end`, with the
/// token of their link: it is on, and was on before that month ended.
pub(crate) async fn summary_recipients(
    conn: &mut AsyncPgConnection,
    owners: &[i64],
    month_end: chrono::DateTime<chrono::Utc>,
) -> ServiceResult<HashMap<i64, Uuid>> {
    let rows: Vec<(i64, Uuid)> = users::table
        .filter(users::id.eq_any(owners))
        .filter(users::monthly_summary)
        .filter(users::monthly_summary_since.is_null().or(users::monthly_summary_since.le(month_end)))
        .select((users::id, users::email_token))
        .load(conn)
        .await?;
    Ok(rows.into_iter().collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_shown_address_keeps_its_domain_and_first_letters() {
        assert_eq!(super::masked("ann@example.com"), "an***@example.com");
        assert_eq!(super::masked("jo@example.com"), "j***@example.com");
        assert_eq!(super::masked("a@example.com"), "a***@example.com");
    }
}
