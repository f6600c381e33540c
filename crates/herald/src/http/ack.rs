//! `POST /v1/ack` (SPEC §7): a user acknowledges events that wait for them.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::openapi::ErrorBody;
use super::{ApiError, Caller};
use crate::hub::Hub;
use crate::values::event::EventId;

/// The body of `POST /v1/ack`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AckRequest {
    /// Event ids, as the `id:` of the stream gave them (strings or numbers).
    #[schema(value_type = Vec<crate::http::openapi::EventIdText>, max_items = 1000)]
    pub ids: Vec<Value>,
}

/// The answer of `POST /v1/ack`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AckAnswer {
    /// Ids that waited for this user and no longer do.
    pub acked: Vec<String>,
    /// Ids that were not waiting for this user: acknowledged before, expired,
    /// dropped from a full inbox, or never addressed to them.
    pub unknown: Vec<String>,
}

/// Acknowledges events for the caller's user: they stop waiting for every
/// connection of that user. Other users' acknowledgements are their own.
#[utoipa::path(post, path = "/v1/ack", tag = "subscribe",
    request_body(content = AckRequest, description = "The ids to acknowledge (at most 1000)"),
    responses(
        (status = 200, description = "Acknowledged (stored with the configured durability)", body = AckAnswer),
        (status = 400, description = "Not a list of event ids", body = ErrorBody),
        (status = 401, description = "Credentials missing, invalid or expired", body = ErrorBody),
        (status = 403, description = "The credentials name no user (an API key, dev mode)", body = ErrorBody),
        (status = 413, description = "Over `limits.max_body_bytes`", body = ErrorBody),
        (status = 503, description = "The inbox file cannot be written now; see Retry-After", body = ErrorBody),
    ))]
pub(crate) async fn ack(
    State(hub): State<Hub>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<AckAnswer>, ApiError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge(hub.config().limits.max_body_bytes),
        _ => ApiError::BadBody(rejection.body_text()),
    })?;
    let request: AckRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadBody(format!("the body must be {{\"ids\": [...]}}: {e}")))?;
    let ids = request
        .ids
        .iter()
        .map(|v| {
            let id = match v {
                Value::String(s) => s.parse::<EventId>().ok(),
                Value::Number(n) => n.as_u64().map(EventId),
                _ => None,
            };
            id.ok_or_else(|| ApiError::BadBody(format!("{v} is not an event id")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outcome = hub.ack(&caller.identity, &ids).await?;
    let text = |ids: Vec<EventId>| ids.into_iter().map(|id| id.to_string()).collect();
    Ok(Json(AckAnswer {
        acked: text(outcome.acked),
        unknown: text(outcome.unknown),
    }))
}
