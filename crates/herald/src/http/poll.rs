//! `GET /v1/poll`: long polling, answered as JSON.

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::openapi::ErrorBody;
use super::{ApiError, Caller};
use crate::delivery::poll::{Polled, DEFAULT_TIMEOUT, MAX_TIMEOUT};
use crate::hub::Hub;
use crate::requests::subscribe::SubscribeError;

#[utoipa::path(get, path = "/v1/poll", tag = "subscribe",
    params(crate::http::openapi::SubscribeParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this id (wins over lastEventId)"),
        ("timeout" = Option<u32>, Query, description = "Seconds to wait for live events, 0 to 120 (default 25)")),
    responses(
        (status = 200, description = "Events (maybe none) and where to continue", body = crate::http::openapi::PollBody),
        (status = 400, description = "Bad pattern or parameter", body = ErrorBody), (status = 401, description = "Credentials missing, invalid or expired", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 429, description = "Refused for now (limits); see Retry-After", body = ErrorBody),
        (status = 503, description = "Hub full or shutting down; see Retry-After", body = ErrorBody),
    ))]
/// Query as for `/v1/events`, plus `timeout` (seconds, default 25, at most
/// 120). Answers `{"events": [{"id", "event", "data"}], "last_event_id",
/// "reset"}`; a refusal for now is `503` (hub full, shutting down) or `429`
/// with `Retry-After`.
pub(super) async fn poll(
    State(hub): State<Hub>,
    caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = query.unwrap_or_default();
    let request = super::subscribe_request(&query, &headers, caller)?;
    let timeout = match form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "timeout") {
        None => DEFAULT_TIMEOUT,
        Some((_, v)) => match v.parse::<u64>() {
            Ok(secs) if Duration::from_secs(secs) <= MAX_TIMEOUT => Duration::from_secs(secs),
            _ => {
                return Err(SubscribeError::BadParameter(
                    "timeout",
                    format!("must be whole seconds from 0 to {}", MAX_TIMEOUT.as_secs()),
                )
                .into())
            }
        },
    };
    match hub.poll(request, timeout).await? {
        Polled::Answer(answer) => {
            let events: Vec<Value> = answer
                .events
                .iter()
                .map(
                    |e| json!({ "id": e.id.to_string(), "event": e.type_name(), "data": &*e.data }),
                )
                .collect();
            let reset = answer.reset.map(|reason| json!({ "reason": reason }));
            let body = json!({
                "events": events,
                "last_event_id": answer.last_event_id.to_string(),
                "reset": reset,
            });
            let mut response = Json(body).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
        Polled::Refused(refusal) => {
            let status = match refusal.error {
                "hub_full" | "shutting_down" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::TOO_MANY_REQUESTS,
            };
            let secs = refusal.retry_after_ms.div_ceil(1000).max(1);
            let body = json!({ "error": refusal.error, "message": refusal.message, "retry_after_ms": refusal.retry_after_ms });
            Ok((
                status,
                [(header::RETRY_AFTER, HeaderValue::from(secs))],
                Json(body),
            )
                .into_response())
        }
    }
}
