//! Health, readiness and stats.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::openapi::ErrorBody;
use super::{require_admin, ApiError, Caller};
use crate::delivery::fanout::Presence;
use crate::hub::{Closing, Hub, UserInfo};

#[utoipa::path(get, path = "/healthz", tag = "operations", security(()), responses((status = 200, description = "The process serves", body = crate::http::openapi::Status)))]
pub(super) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Not ready while shutting down.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()), responses((status = 200, description = "Ready", body = crate::http::openapi::Status), (status = 503, description = "Draining, or the store cannot be written (`reason` says why)", body = crate::http::openapi::Status)))]
pub(super) async fn readyz(State(hub): State<Hub>) -> (StatusCode, Json<Value>) {
    match hub.readiness() {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "log": hub.log().kind() })),
        ),
        Err(reason) if hub.is_shutting_down() => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining", "reason": reason })),
        ),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "reason": reason, "log": hub.log().kind() })),
        ),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct StatsQuery {
    user: Option<String>,
}

/// Totals, or one user's numbers with `?user=` (admin).
#[utoipa::path(get, path = "/v1/stats", tag = "admin", params(("user" = Option<String>, Query, description = "One user's numbers instead of totals")), responses((status = 200, description = "Numbers", body = crate::http::openapi::StatsBody), (status = 401, description = "Credentials missing, invalid or expired", body = ErrorBody), (status = 403, description = "Not an admin", body = ErrorBody)))]
pub(super) async fn stats(
    State(hub): State<Hub>,
    caller: Caller,
    Query(query): Query<StatsQuery>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&hub, &caller)?;
    let value = match query.user {
        Some(user) => serde_json::to_value(hub.user(&user)),
        None => serde_json::to_value(hub.cluster_stats().await),
    };
    Ok(Json(value.expect("stats serialize")))
}

/// Who is on a topic or pattern (admin).
#[utoipa::path(get, path = "/v1/presence/{pattern}", tag = "admin", params(("pattern" = crate::http::openapi::PatternText, Path, description = "A topic or pattern (may contain `/`)")), responses((status = 200, description = "Connections and users on it", body = crate::delivery::fanout::Presence), (status = 400, description = "Bad pattern", body = ErrorBody), (status = 401, description = "Credentials missing, invalid or expired", body = ErrorBody), (status = 403, description = "Not an admin", body = ErrorBody)))]
pub(super) async fn presence(
    State(hub): State<Hub>,
    caller: Caller,
    Path(pattern): Path<String>,
) -> Result<Json<Presence>, ApiError> {
    require_admin(&hub, &caller)?;
    hub.presence(&pattern)
        .map(Json)
        .map_err(|e| ApiError::BadPattern(pattern, e))
}

/// One user: online, and with how many streams (admin).
#[utoipa::path(get, path = "/v1/users/{user}", tag = "admin", params(("user" = String, Path, description = "A token `sub`")), responses((status = 200, description = "Online, streams", body = crate::hub::UserInfo), (status = 401, description = "Credentials missing, invalid or expired", body = ErrorBody), (status = 403, description = "Not an admin", body = ErrorBody)))]
pub(super) async fn user(
    State(hub): State<Hub>,
    caller: Caller,
    Path(user): Path<String>,
) -> Result<Json<UserInfo>, ApiError> {
    require_admin(&hub, &caller)?;
    Ok(Json(hub.user(&user)))
}

/// Closes one stream; its client reconnects (admin).
#[utoipa::path(delete, path = "/v1/connections/{id}", tag = "admin", params(("id" = String, Path, description = "A `connection_id` from `herald.connected`")), responses((status = 200, description = "Closed; the client reconnects", body = crate::http::openapi::Closed), (status = 202, description = "Clustered: not on this node; the other nodes were told to close it", body = crate::http::openapi::Closed), (status = 404, description = "No such open stream", body = ErrorBody), (status = 503, description = "Clustered: the engine cannot be reached", body = ErrorBody), (status = 401, description = "Credentials missing, invalid or expired", body = ErrorBody), (status = 403, description = "Not an admin", body = ErrorBody)))]
pub(super) async fn close_connection(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_admin(&hub, &caller)?;
    match hub.close_connection_anywhere(&id).await? {
        Closing::Unknown => Err(ApiError::UnknownConnection(id)),
        Closing::Closed(n) => Ok((StatusCode::OK, Json(json!({ "closed": n })))),
        Closing::Forwarded(n) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "closed": n, "forwarded": true })),
        )),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Resubscribe {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// Adds and removes patterns of an open stream (admin), with the checks of
/// a subscribe against the stream's own token.
#[utoipa::path(post, path = "/v1/connections/{id}/subscriptions", tag = "admin", params(("id" = String, Path, description = "A `connection_id`")), request_body = crate::http::openapi::SubscriptionChange, responses((status = 200, description = "Its patterns now", body = crate::http::openapi::Subscriptions), (status = 400, description = "Bad pattern or over the topic limit", body = ErrorBody), (status = 401, description = "Credentials missing, invalid or expired", body = ErrorBody), (status = 403, description = "Not an admin", body = ErrorBody), (status = 404, description = "No such open stream", body = ErrorBody)))]
pub(super) async fn resubscribe(
    State(hub): State<Hub>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<Resubscribe>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&hub, &caller)?;
    let Json(change) = body.map_err(|e| ApiError::BadBody(e.body_text()))?;
    let topics = hub.resubscribe(&id, &change.add, &change.remove)?;
    let topics: Vec<&str> = topics.iter().map(|p| p.as_str()).collect();
    Ok(Json(json!({ "connection_id": id, "topics": topics })))
}

/// One subscription pattern and how many open streams hold it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct TopicCount {
    pub pattern: String,
    pub connections: usize,
}

/// Subscription patterns of open streams, with their stream counts (admin).
#[utoipa::path(get, path = "/v1/topics", tag = "admin", responses((status = 200, description = "Patterns, most held first", body = Vec<TopicCount>), (status = 401, description = "Credentials missing, invalid or expired", body = ErrorBody), (status = 403, description = "Not an admin", body = ErrorBody)))]
pub(super) async fn topics(
    State(hub): State<Hub>,
    caller: Caller,
) -> Result<Json<Vec<TopicCount>>, ApiError> {
    require_admin(&hub, &caller)?;
    let mut list: Vec<TopicCount> = hub
        .fanout()
        .subscriptions()
        .into_iter()
        .map(|(pattern, connections)| TopicCount {
            pattern,
            connections,
        })
        .collect();
    list.sort_by(|a, b| {
        b.connections
            .cmp(&a.connections)
            .then_with(|| a.pattern.cmp(&b.pattern))
    });
    Ok(Json(list))
}

/// Closes every stream of a user (admin).
#[utoipa::path(delete, path = "/v1/users/{user}/connections", tag = "admin", params(("user" = String, Path, description = "A token `sub`")), responses((status = 200, description = "How many were closed here (clustered, with `forwarded`: the other nodes close theirs)", body = crate::http::openapi::Closed), (status = 503, description = "Clustered: the engine cannot be reached", body = ErrorBody), (status = 401, description = "Credentials missing, invalid or expired", body = ErrorBody), (status = 403, description = "Not an admin", body = ErrorBody)))]
pub(super) async fn close_user(
    State(hub): State<Hub>,
    caller: Caller,
    Path(user): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&hub, &caller)?;
    Ok(Json(match hub.close_user_anywhere(&user).await? {
        Closing::Forwarded(n) => json!({ "closed": n, "forwarded": true }),
        Closing::Closed(n) => json!({ "closed": n }),
        Closing::Unknown => json!({ "closed": 0 }),
    }))
}

/// Prometheus metrics (OpenMetrics text). Like `/healthz`, open to anyone
/// who can reach the hub: aggregate numbers only.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()), responses((status = 200, description = "Prometheus metrics", content_type = "application/openmetrics-text", body = String)))]
pub(super) async fn metrics(State(hub): State<Hub>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        hub.render_metrics(),
    )
}

/// Counts every answer of 400 and above by status.
pub(super) async fn count_refusals(
    State(hub): State<Hub>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(request).await;
    if response.status().as_u16() >= 400 {
        hub.metrics().http_refused(response.status().as_u16());
    }
    response
}

pub(super) async fn not_found() -> ApiError {
    ApiError::NotFound
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
