//! Which optional emails an account gets: for now, the monthly usage summary. Its owner stops
//! it in the app, or from the summary itself without signing in: every summary links to
//! `/email/unsubscribe/<token>` (and names it in `List-Unsubscribe`), the token being the
//! account's random `email_token`.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::{self, DbPool};
use crate::schema::users;
use crate::ServiceResult;

/// The page that stops an account's monthly summary (GET shows it, POST stops it).
pub fn unsubscribe_url(public_url: &str, token: Uuid) -> String {
    format!("{}/email/unsubscribe/{token}", public_url.trim_end_matches('/'))
}

pub async fn gets_monthly_summary(db: &DbPool, user_id: i64) -> ServiceResult<bool> {
    let mut conn = db::conn(db).await?;
    Ok(users::table.find(user_id).select(users::monthly_summary).get_result(&mut conn).await?)
}

pub async fn set_monthly_summary(db: &DbPool, user_id: i64, on: bool) -> ServiceResult<()> {
    let mut conn = db::conn(db).await?;
    diesel::update(users::table.find(user_id)).set(users::monthly_summary.eq(on)).execute(&mut conn).await?;
    Ok(())
}

/// The address whose summary the link with `token` stops, if the token is one.
pub async fn address_of_token(db: &DbPool, token: Uuid) -> ServiceResult<String> {
    let mut conn = db::conn(db).await?;
    Ok(users::table.filter(users::email_token.eq(token)).select(users::email).get_result(&mut conn).await?)
}

/// Stops the monthly summary of the account the link with `token` belongs to; returns its
/// address. Again is no error (a mail reader's one-click POST may come twice).
pub async fn stop_monthly_summary_by_token(db: &DbPool, token: Uuid) -> ServiceResult<String> {
    let mut conn = db::conn(db).await?;
    let email: String = diesel::update(users::table.filter(users::email_token.eq(token)))
        .set(users::monthly_summary.eq(false))
        .returning(users::email)
        .get_result(&mut conn)
        .await?;
    tracing::info!("monthly summary stopped from its email link");
    Ok(email)
}

/// Of `owners`, those who get the monthly summary, with the token of their link.
pub(crate) async fn summary_recipients(
    conn: &mut AsyncPgConnection,
    owners: &[i64],
) -> ServiceResult<HashMap<i64, Uuid>> {
    let rows: Vec<(i64, Uuid)> = users::table
        .filter(users::id.eq_any(owners))
        .filter(users::monthly_summary)
        .select((users::id, users::email_token))
        .load(conn)
        .await?;
    Ok(rows.into_iter().collect())
}
