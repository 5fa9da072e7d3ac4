//! Dashboard data that is not a page: a key's live usage stream (server-sent events) and its
//! CSV export, and the admins' monthly export of every key. Session cookie required (401
//! without one); a key that is not the caller's (and the caller not an admin) does not exist:
//! 404. A database that cannot be asked is a 503, never a 404.

use std::convert::Infallible;
use std::time::Duration;

use app::api::session::user_from_headers;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures_util::stream::{self, Stream, StreamExt, TryStreamExt};
use serde::Deserialize;
use services::accounts::User;
use services::keys::{api_keys, ApiKey, ApiKeyId};
use services::outage_log::LogEvery;
use services::usage::export::{CsvStream, ExportKey, ExportSlot, ExportSlots, ExportSpec, NoExportSlot, Pace};
use services::usage::periods::{DayRange, Granularity, Month};
use services::{ServiceError, Services};

use crate::startup::Closing;

use crate::error::ApiError;

/// How often the live stream pushes fresh data.
const LIVE_EVERY: Duration = Duration::from_secs(3);

pub fn router() -> Router<Services> {
    Router::new()
        .route("/dashboard/developers/api-keys/{id}/usage/live", get(live))
        .route("/dashboard/developers/api-keys/{id}/usage.csv", get(key_csv))
        .route("/admin/usage.csv", get(admin_csv))
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "not found")
}

/// The signed-in caller: 401 without a valid session; a failed lookup is the database's fault
/// (503, logged by `ApiError`), not the caller's.
async fn signed_in(services: &Services, headers: &HeaderMap) -> Result<User, ApiError> {
    user_from_headers(services, headers)
        .await?
        .ok_or_else(|| ApiError::unauthorized("unauthorized", "sign in required"))
}

/// The key, if the signed-in caller may see it; 404 otherwise.
async fn visible_key(services: &Services, headers: &HeaderMap, id: &str) -> Result<ApiKey, ApiError> {
    let user = signed_in(services, headers).await?;
    key_visible_to(services, &user, id).await
}

async fn key_visible_to(services: &Services, user: &User, id: &str) -> Result<ApiKey, ApiError> {
    let id = ApiKeyId::parse(id).map_err(|_| not_found())?;
    api_keys::get_for(&services.db, id, user).await.map_err(|e| match e {
        ServiceError::NotFound => not_found(),
        other => other.into(),
    })
}

async fn live(
    State(services): State<Services>,
    closing: Option<Extension<Closing>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let key = visible_key(&services, &headers, &id).await?;
    let updates =
        stream::unfold((services, headers, id, key, true), |(services, headers, id, mut key, first)| async move {
            if !first {
                tokio::time::sleep(LIVE_EVERY).await;
                // Signed out or no longer allowed since the stream began: it ends. A database that
                // cannot say keeps the stream (its data comes from Redis).
                match visible_key(&services, &headers, &id).await {
                    Ok(current) => key = current,
                    Err(e) if e.status.is_client_error() => return None,
                    Err(_) => {}
                }
            }
            let event = match app::api::usage::ssr::live_data(&services, &key).await {
                Ok(data) => Event::default().event("live").json_data(&data).unwrap_or_default(),
                // The page keeps its last data and says it is delayed.
                Err(e) => {
                    // Every open usage page, every few seconds: once in a while, not per push.
                    static LOG: LogEvery = LogEvery::new();
                    services::warn_every!(LOG, error = %e, "live usage unavailable");
                    Event::default().event("delayed").data("usage data delayed")
                }
            };
            Some((Ok(event), (services, headers, id, key, false)))
        });
    // The page reconnects on its own once a server is back.
    let until_closing = async move {
        match closing {
            Some(Extension(closing)) => closing.wait().await,
            None => std::future::pending().await,
        }
    };
    Ok(Sse::new(updates.take_until(until_closing)).keep_alive(KeepAlive::default()))
}

#[derive(Deserialize)]
struct ExportQuery {
    from: Option<String>,
    to: Option<String>,
    granularity: Option<String>,
}

async fn key_csv(
    State(services): State<Services>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let user = signed_in(&services, &headers).await?;
    let key = key_visible_to(&services, &user, &id).await?;
    let Query(q) = q.map_err(bad_query)?;
    let (Some(from), Some(to)) = (q.from.as_deref(), q.to.as_deref()) else {
        return Err(ApiError::bad_request("invalid_range", "from and to are required (YYYY-MM-DD)"));
    };
    let range = DayRange::parse(from, to).map_err(|e| ApiError::bad_request("invalid_range", e.to_string()))?;
    let granularity = Granularity::parse(q.granularity.as_deref().unwrap_or("day"))
        .map_err(|e| ApiError::bad_request("invalid_granularity", e.to_string()))?;
    let filename = format!("keymeter-{}-{}-{}-{}.csv", key.prefix, range.from, range.to, granularity.as_str());
    let spec = ExportSpec {
        keys: vec![ExportKey { id: key.id.0, name: key.name, owner_email: None }],
        granularity,
        range,
        with_owner: false,
    };
    let csv = CsvStream::start(&services.db, export_slot(&services, &user).await?, spec, Pace::default()).await?;
    Ok(csv_response(csv, &filename))
}

/// A place among this instance's running exports; 503 with `Retry-After` when they stay full,
/// 429 when the user already runs as many as one may.
async fn export_slot(services: &Services, user: &User) -> Result<ExportSlot, ApiError> {
    let secs = ExportSlots::WAIT.as_secs();
    services.exports.take(user.id).await.map_err(|refusal| match refusal {
        NoExportSlot::Busy => ApiError::busy(
            "exports_busy",
            format!("Too many exports are running on this server; try again in {secs} seconds."),
            secs,
        ),
        NoExportSlot::TooManyOfYours => ApiError {
            retry_after: Some(secs),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_exports",
                format!("You already have {} exports running; try again when one has finished.", ExportSlots::PER_USER),
            )
        },
    })
}

/// A query string that does not fit (a parameter given twice, say): the same JSON 400 as every
/// other bad export request, not axum's plain-text rejection.
fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request("invalid_query", rejection.body_text())
}

#[derive(Deserialize)]
struct AdminExportQuery {
    month: Option<String>,
}

/// Every key's daily usage of one calendar month, for invoicing.
async fn admin_csv(
    State(services): State<Services>,
    headers: HeaderMap,
    q: Result<Query<AdminExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let user = signed_in(&services, &headers).await?;
    if !user.is_admin() {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "admins only"));
    }
    let Query(q) = q.map_err(bad_query)?;
    let month = Month::parse(q.month.as_deref().unwrap_or_default())
        .map_err(|e| ApiError::bad_request("invalid_month", e.to_string()))?;
    let range = month.days();
    let keys = api_keys::list_all(&services.db).await?;
    // With each key's owner: invoices go to owners.
    let keys = keys.into_iter().map(|k| ExportKey { id: k.id.0, name: k.name, owner_email: Some(k.owner_email) });
    let spec = ExportSpec { keys: keys.collect(), granularity: Granularity::Day, range, with_owner: true };
    let csv = CsvStream::start(&services.db, export_slot(&services, &user).await?, spec, Pace::default()).await?;
    Ok(csv_response(csv, &format!("keymeter-usage-{month}.csv")))
}

/// The CSV, written out as the export reads it. A failure after the first bytes cannot become
/// an error status any more: it is logged, and the body ends with an error, so the connection
/// is cut before the end of the chunked body and the client sees a broken download.
fn csv_response(csv: CsvStream, filename: &str) -> Response {
    let body = Body::from_stream(
        csv.inspect_err(|e| tracing::error!(error = %e, "CSV export failed after it began; the download is cut off")),
    );
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        body,
    )
        .into_response()
}
