//! In-app notifications: the bell on the dashboard.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::db::{self, DbPool};
use crate::mailer::{self, html_paragraph, Email};
use crate::public_url::PublicUrl;
use crate::schema::notifications;
use crate::ServiceResult;
use format::html_escape;

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = notifications)]
pub struct Notification {
    pub id: i64,
    pub kind: String,
    pub title: String,
    pub body: String,
    pub link: Option<String>,
    pub created_at: DateTime<Utc>,
    pub read_at: Option<DateTime<Utc>>,
}

/// What to tell someone.
pub struct NewNotification<'a> {
    pub user_id: i64,
    pub kind: &'a str,
    pub title: &'a str,
    pub body: &'a str,
    pub link: Option<&'a str>,
    /// At most one notification per key (e.g. per alert threshold and period).
    pub dedupe_key: Option<&'a str>,
}

/// A key's owner hears of something about the key in the bell and by email, linked to the key.
pub(crate) async fn tell_key_owner(
    conn: &mut AsyncPgConnection,
    user: (i64, &str),
    kind: &'static str,
    title: &str,
    body: String,
    key_id: uuid::Uuid,
    public_url: &PublicUrl,
) -> ServiceResult<()> {
    let link = format!("/dashboard/developers/api-keys/{key_id}");
    let news = News { kind, title, body: &body, link: &link, link_label: "See the key", dedupe_key: None };
    tell(conn, user, &news, public_url).await
}

/// Something to tell a user in the bell and by email, linked to a page of the app.
pub(crate) struct News<'a> {
    pub kind: &'a str,
    pub title: &'a str,
    pub body: &'a str,
    /// The page's path.
    pub link: &'a str,
    /// The email's words for the link.
    pub link_label: &'a str,
    /// At most one of these per key, in the bell and by email.
    pub dedupe_key: Option<&'a str>,
}

/// Tells the user `(id, address)` the news, in the bell and by email, inside the caller's
/// transaction.
pub(crate) async fn tell(
    conn: &mut AsyncPgConnection,
    (user_id, email): (i64, &str),
    news: &News<'_>,
    public_url: &PublicUrl,
) -> ServiceResult<()> {
    let n = NewNotification {
        user_id,
        kind: news.kind,
        title: news.title,
        body: news.body,
        link: Some(news.link),
        dedupe_key: news.dedupe_key,
    };
    if !notify(conn, &n).await? {
        return Ok(());
    }
    let url = public_url.link(news.link);
    let text = format!("{}\n\n{}: {url}\n", news.body, news.link_label);
    let html = format!(
        "{}<p><a href=\"{}\">{}</a></p>",
        html_paragraph(news.body),
        html_escape(&url),
        html_escape(news.link_label)
    );
    let email = Email {
        to: email,
        subject: news.title,
        text: &text,
        html: &html,
        attachments: &[],
        list_unsubscribe: None,
        credential_until: None,
    };
    mailer::enqueue(conn, &email, news.dedupe_key).await?;
    Ok(())
}

/// Adds a notification inside the caller's transaction; false if its dedupe key was seen.
pub async fn notify(conn: &mut AsyncPgConnection, n: &NewNotification<'_>) -> ServiceResult<bool> {
    let inserted = diesel::insert_into(notifications::table)
        .values((
            notifications::user_id.eq(n.user_id),
            notifications::kind.eq(n.kind),
            notifications::title.eq(n.title),
            notifications::body.eq(n.body),
            notifications::link.eq(n.link),
            notifications::dedupe_key.eq(n.dedupe_key),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}

/// A user's notifications, newest first (in the order they were stored): the newest `limit`,
/// or the `limit` before the one numbered `before` (the next page of the list).
pub async fn recent(db: &DbPool, user_id: i64, limit: i64, before: Option<i64>) -> ServiceResult<Vec<Notification>> {
    let mut conn = db::conn(db).await?;
    let mut query = notifications::table
        .filter(notifications::user_id.eq(user_id))
        .order(notifications::id.desc())
        .limit(limit)
        .select(Notification::as_select())
        .into_boxed();
    if let Some(before) = before {
        query = query.filter(notifications::id.lt(before));
    }
    Ok(query.load(&mut conn).await?)
}

pub async fn unread_count(db: &DbPool, user_id: i64) -> ServiceResult<i64> {
    let mut conn = db::conn(db).await?;
    Ok(notifications::table
        .filter(notifications::user_id.eq(user_id))
        .filter(notifications::read_at.is_null())
        .count()
        .get_result(&mut conn)
        .await?)
}

/// Marks read what the user was shown: a page of their list, from its oldest to its newest
/// notification. One that arrived after the list was read, or that is on an older page, stays
/// unread.
pub async fn mark_read(db: &DbPool, user_id: i64, oldest_shown: i64, newest_shown: i64) -> ServiceResult<()> {
    let mut conn = db::conn(db).await?;
    diesel::update(
        notifications::table
            .filter(notifications::user_id.eq(user_id))
            .filter(notifications::id.between(oldest_shown, newest_shown))
            .filter(notifications::read_at.is_null()),
    )
    .set(notifications::read_at.eq(Utc::now()))
    .execute(&mut conn)
    .await?;
    Ok(())
}
