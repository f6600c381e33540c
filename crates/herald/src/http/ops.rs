//! Health, readiness and stats.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{require_admin, ApiError, Caller};
use crate::hub::{Hub, HubStats};

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Not ready while shutting down.
pub async fn readyz(State(hub): State<Hub>) -> (StatusCode, Json<Value>) {
    if hub.is_shutting_down() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining" })),
        )
    } else {
        (
            StatusCode::OK,
            Json(json!({ "status": "ready", "log": hub.log().kind() })),
        )
    }
}

/// Totals (admin).
pub async fn stats(State(hub): State<Hub>, caller: Caller) -> Result<Json<HubStats>, ApiError> {
    require_admin(&hub, &caller)?;
    Ok(Json(hub.stats()))
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
