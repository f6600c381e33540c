//! `/v1/state/{topic}/{key}` (SPEC §6): retained values with versions.
//!
//! A topic may contain `/`, so the key is the last segment of the path. A
//! GET whose last segment is a key of the preceding topic answers that key;
//! any other GET reads the whole path as a topic and answers all its keys.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::openapi::ErrorBody;
use super::{require_publisher, ApiError, Caller};
use crate::delivery::state::{Change, Changed, IfMatch};
use crate::hub::Hub;

/// `TOPIC/KEY` → (topic, key).
fn split(path: &str) -> Result<(&str, &str), ApiError> {
    path.rsplit_once('/')
        .ok_or_else(|| ApiError::BadBody("the path is /v1/state/TOPIC/KEY".into()))
}

fn if_match(headers: &HeaderMap) -> Result<Option<IfMatch>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(Some(IfMatch::Any));
    }
    text.trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map(|v| Some(IfMatch::Version(v)))
        .map_err(|_| ApiError::BadBody(format!("If-Match must be \"VERSION\" or *, got {text:?}")))
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits")
}

async fn change(
    hub: Hub,
    caller: Caller,
    path: String,
    headers: HeaderMap,
    change: Change,
) -> Result<Response, ApiError> {
    require_publisher(&hub, &caller)?;
    let expected = if_match(&headers)?;
    let (topic, key) = split(&path)?;
    let Changed { version, id } = hub
        .change_state(&caller.identity, topic, key, change, expected)
        .await?;
    let body = json!({ "key": key, "version": version, "id": id.to_string() });
    Ok(([(header::ETAG, etag(version))], Json(body)).into_response())
}

fn json_body(hub: &Hub, body: Result<Json<Value>, JsonRejection>) -> Result<Value, ApiError> {
    body.map(|Json(v)| v).map_err(|e| match e.status() {
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::BodyTooLarge(hub.config().limits.max_body_bytes)
        }
        _ => ApiError::BadBody(e.body_text()),
    })
}

/// Sets a value.
#[utoipa::path(put, path = "/v1/state/{path}", tag = "state",
    params(("path" = crate::http::openapi::StatePath, Path, description = "TOPIC/KEY"),
        ("If-Match" = Option<String>, Header, description = "\"VERSION\" the value must have, or * for any existing")),
    request_body(content = Value, description = "The new value (any JSON)"),
    responses(
        (status = 200, description = "Changed; the state event is in the log", body = crate::http::openapi::StateChanged),
        (status = 400, description = "Bad topic, key or body", body = ErrorBody),
        (status = 413, description = "Over `limits.max_event_bytes` or `limits.max_body_bytes`", body = ErrorBody),
        (status = 507, description = "`state_full`: the change would pass `state.max_keys` or `state.max_bytes`", body = ErrorBody),
        (status = 401, description = "Credentials missing, invalid or expired", body = ErrorBody),
        (status = 403, description = "May not publish to the topic", body = ErrorBody),
        (status = 412, description = "If-Match does not match", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
    ))]
pub(super) async fn put(
    State(hub): State<Hub>,
    caller: Caller,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let value = json_body(&hub, body)?;
    change(hub, caller, path, headers, Change::Put(value)).await
}

/// Changes a value with an RFC 7396 merge patch.
#[utoipa::path(patch, path = "/v1/state/{path}", tag = "state",
    params(("path" = crate::http::openapi::StatePath, Path, description = "TOPIC/KEY"),
        ("If-Match" = Option<String>, Header, description = "\"VERSION\" the value must have, or * for any existing")),
    request_body(content = Value, content_type = "application/merge-patch+json", description = "A merge patch: null removes a member"),
    responses(
        (status = 200, description = "Changed; the state event (with the patch) is in the log", body = crate::http::openapi::StateChanged),
        (status = 400, description = "Bad topic, key or body", body = ErrorBody),
        (status = 413, description = "Over `limits.max_event_bytes` or `limits.max_body_bytes`", body = ErrorBody),
        (status = 507, description = "`state_full`: the change would pass `state.max_keys` or `state.max_bytes`", body = ErrorBody),
        (status = 401, description = "Credentials missing, invalid or expired", body = ErrorBody),
        (status = 403, description = "May not publish to the topic", body = ErrorBody),
        (status = 412, description = "If-Match does not match", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
    ))]
pub(super) async fn patch(
    State(hub): State<Hub>,
    caller: Caller,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let patch = json_body(&hub, body)?;
    change(hub, caller, path, headers, Change::Patch(patch)).await
}

/// Removes a value.
#[utoipa::path(delete, path = "/v1/state/{path}", tag = "state",
    params(("path" = crate::http::openapi::StatePath, Path, description = "TOPIC/KEY"),
        ("If-Match" = Option<String>, Header, description = "\"VERSION\" the value must have, or * for any existing")),
    responses(
        (status = 200, description = "Removed; the state event is in the log", body = crate::http::openapi::StateChanged),
        (status = 400, description = "Bad topic or key", body = ErrorBody),
        (status = 401, description = "Credentials missing, invalid or expired", body = ErrorBody),
        (status = 403, description = "May not publish to the topic", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = 412, description = "If-Match does not match", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
    ))]
pub(super) async fn delete(
    State(hub): State<Hub>,
    caller: Caller,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    change(hub, caller, path, headers, Change::Delete).await
}

/// One key (with its ETag), or every key of a topic.
#[utoipa::path(get, path = "/v1/state/{path}", tag = "state",
    params(("path" = crate::http::openapi::TopicName, Path, description = "TOPIC/KEY for one key, or TOPIC for all")),
    responses(
        (status = 200, description = "{\"key\", \"version\", \"value\"} with an ETag, or {\"topic\", \"keys\"}", body = Value),
        (status = 400, description = "Bad topic", body = ErrorBody),
        (status = 401, description = "Credentials missing, invalid or expired", body = ErrorBody),
        (status = 403, description = "May not read the topic", body = ErrorBody),
    ))]
pub(super) async fn get(
    State(hub): State<Hub>,
    caller: Caller,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    // The path names a key of a topic, or else a topic. Whichever read
    // succeeds first caught this node up with the engine (clustered); the
    // second need not again.
    let mut caught_up = false;
    if let Ok((topic, key)) = split(&path) {
        if let Ok(keys) = hub.read_state(&caller.identity, topic).await {
            if let Some(entry) = keys.get(key) {
                let body = json!({ "key": key, "version": entry.version, "value": entry.value });
                return Ok(([(header::ETAG, etag(entry.version))], Json(body)).into_response());
            }
            caught_up = true;
        }
    }
    let keys = match caught_up {
        true => hub.read_state_held(&caller.identity, &path).await?,
        false => hub.read_state(&caller.identity, &path).await?,
    };
    Ok(Json(json!({ "topic": path, "keys": keys })).into_response())
}
