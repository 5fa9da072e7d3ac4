//! Dashboard data that is not a page: a key's live usage stream (server-sent events) and its
//! CSV export, and the admins' monthly export of every key. Session cookie required; a key
//! that is not the caller's (and the caller not an admin) does not exist: 404.

use std::convert::Infallible;
use std::time::Duration;

use app::api::session::user_from_headers;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use services::accounts::User;
use services::keys::{api_keys, ApiKey, ApiKeyId};
use services::usage::export;

use crate::startup::Closing;
use services::usage::reports::{self, DayRange, ExportRow, Granularity, Month};
use services::{ServiceError, Services};
use uuid::Uuid;

use crate::error::ApiError;

/// How often the live stream pushes fresh data.
const LIVE_EVERY: Duration = Duration::from_secs(3);
/// Rows per chunk of a streamed export.
const ROWS_PER_CHUNK: usize = 500;

pub fn router() -> Router<Services> {
    Router::new()
        .route("/dashboard/developers/api-keys/{id}/usage/live", get(live))
        .route("/dashboard/developers/api-keys/{id}/usage.csv", get(key_csv))
        .route("/admin/usage.csv", get(admin_csv))
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "not found")
}

async fn signed_in(services: &Services, headers: &HeaderMap) -> Result<User, ApiError> {
    user_from_headers(services, headers).await.map_err(|_| not_found())?.ok_or_else(not_found)
}

/// The key, if the signed-in caller may see it; 404 otherwise.
async fn visible_key(services: &Services, headers: &HeaderMap, id: &str) -> Result<ApiKey, ApiError> {
    let user = signed_in(services, headers).await?;
    let id = ApiKeyId::parse(id).map_err(|_| not_found())?;
    api_keys::get_for(&services.db, id, &user).await.map_err(|e| match e {
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
    let updates = stream::unfold((services, key, true), |(services, key, first)| async move {
        if !first {
            tokio::time::sleep(LIVE_EVERY).await;
        }
        let event = match app::api::usage::ssr::live_data(&services, &key).await {
            Ok(data) => Event::default().event("live").json_data(&data).unwrap_or_default(),
            // The page keeps its last data and says it is delayed.
            Err(e) => {
                tracing::warn!(error = %e, "live usage unavailable");
                Event::default().event("delayed").data("usage data delayed")
            }
        };
        Some((Ok(event), (services, key, false)))
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
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let key = visible_key(&services, &headers, &id).await?;
    let (Some(from), Some(to)) = (q.from.as_deref(), q.to.as_deref()) else {
        return Err(ApiError::bad_request("invalid_range", "from and to are required (YYYY-MM-DD)"));
    };
    let range = DayRange::parse(from, to).map_err(|e| ApiError::bad_request("invalid_range", e.to_string()))?;
    let granularity = Granularity::parse(q.granularity.as_deref().unwrap_or("day"))
        .map_err(|e| ApiError::bad_request("invalid_granularity", e.to_string()))?;
    let rows = reports::export_rows(&services.db, &[key.id.0], granularity, range).await?;
    let names = vec![(key.id.0, key.name.clone())];
    let filename = format!(
        "keymeter-{}-{}-{}-{}.csv",
        key.prefix,
        range.from,
        range.to,
        q.granularity.as_deref().unwrap_or("day")
    );
    Ok(csv_response(rows, names, &filename))
}

#[derive(Deserialize)]
struct AdminExportQuery {
    month: Option<String>,
}

/// Every key's daily usage of one calendar month, for invoicing.
async fn admin_csv(
    State(services): State<Services>,
    headers: HeaderMap,
    Query(q): Query<AdminExportQuery>,
) -> Result<Response, ApiError> {
    let user = signed_in(&services, &headers).await?;
    if !user.is_admin() {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "admins only"));
    }
    let month = Month::parse(q.month.as_deref().unwrap_or_default())
        .map_err(|e| ApiError::bad_request("invalid_month", e.to_string()))?;
    let range = month.days();
    let keys = api_keys::list_all(&services.db).await?;
    let ids: Vec<Uuid> = keys.iter().map(|k| k.id.0).collect();
    let names = keys.into_iter().map(|k| (k.id.0, k.name)).collect();
    let rows = reports::export_rows(&services.db, &ids, Granularity::Day, range).await?;
    Ok(csv_response(rows, names, &format!("keymeter-usage-{month}.csv")))
}

/// The CSV, streamed in chunks.
fn csv_response(rows: Vec<ExportRow>, names: Vec<(Uuid, String)>, filename: &str) -> Response {
    let names: std::collections::HashMap<Uuid, String> = names.into_iter().collect();
    let header_chunk = stream::once(async { Ok::<_, Infallible>(export::HEADER.to_owned()) });
    let chunks: Vec<Vec<ExportRow>> = rows.chunks(ROWS_PER_CHUNK).map(<[ExportRow]>::to_vec).collect();
    let body_chunks = stream::iter(chunks.into_iter().map(move |chunk| {
        let mut out = String::with_capacity(chunk.len() * 160);
        for row in &chunk {
            export::write_row(&mut out, row, names.get(&row.key_id).map(String::as_str).unwrap_or(""));
        }
        Ok::<_, Infallible>(out)
    }));
    let body = Body::from_stream(futures_util::StreamExt::chain(header_chunk, body_chunks));
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
