//! Every HTTP refusal, and its one JSON shape: `{"error": CODE, "message": TEXT}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use std::time::Duration;

use crate::access::auth::AuthError;
use crate::log::LogError;
use crate::requests::publish::PublishError;
use crate::requests::subscribe::SubscribeError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    #[error(transparent)]
    Resubscribe(#[from] crate::hub::ResubscribeError),
    #[error(transparent)]
    State(#[from] crate::delivery::state::StateError),
    #[error(transparent)]
    Ack(#[from] crate::hub::AckError),
    /// Clustered: the engine cannot take the request now.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The body is not the JSON (or text) the endpoint takes.
    #[error("{0}")]
    BadBody(String),
    #[error("the request body is over the limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("requests with side effects that carry a cookie (or reach a dev-mode hub) must come from the hub's own origin or one of cors.allowed_origins; this one came from {0}")]
    ForbiddenOrigin(String),
    #[error("the Host {0:?} is not one of this hub's names (allowed_hosts; in dev mode also IP addresses and localhost)")]
    ForbiddenHost(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("too many publishes; try again in {} ms", .0.as_millis())]
    RateLimited(Duration),
    #[error("no such endpoint")]
    NotFound,
    #[error("no open connection has the id {0:?}")]
    UnknownConnection(String),
    #[error("pattern {0:?} {1}")]
    BadPattern(String, crate::values::topic::TopicError),
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        use SubscribeError as S;
        match self {
            ApiError::Log(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Publish(e) => publish_parts(e),
            ApiError::Resubscribe(e) => match e {
                crate::hub::ResubscribeError::UnknownConnection(_) => {
                    (StatusCode::NOT_FOUND, "not_found")
                }
                crate::hub::ResubscribeError::Auth(a) => auth_parts(a),
                crate::hub::ResubscribeError::Subscribe(_) => {
                    (StatusCode::BAD_REQUEST, "invalid_topic")
                }
            },
            ApiError::State(e) => match e {
                crate::delivery::state::StateError::BadTopic(..) => {
                    (StatusCode::BAD_REQUEST, "invalid_topic")
                }
                crate::delivery::state::StateError::BadKey(_) => {
                    (StatusCode::BAD_REQUEST, "invalid_key")
                }
                crate::delivery::state::StateError::NotFound { .. } => {
                    (StatusCode::NOT_FOUND, "not_found")
                }
                crate::delivery::state::StateError::VersionMismatch { .. } => {
                    (StatusCode::PRECONDITION_FAILED, "version_mismatch")
                }
                crate::delivery::state::StateError::BadValue(_) => {
                    (StatusCode::BAD_REQUEST, "invalid_value")
                }
                crate::delivery::state::StateError::VersionsExhausted => {
                    (StatusCode::CONFLICT, "versions_exhausted")
                }
                crate::delivery::state::StateError::Full(_) => {
                    (StatusCode::INSUFFICIENT_STORAGE, "state_full")
                }
                crate::delivery::state::StateError::Publish(p) => publish_parts(p),
                crate::delivery::state::StateError::Auth(a) => auth_parts(a),
            },
            ApiError::Ack(e) => match e {
                crate::hub::AckError::Auth(a) => auth_parts(a),
                crate::hub::AckError::TooMany(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
                crate::hub::AckError::Store(_) | crate::hub::AckError::Unavailable(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
                }
            },
            ApiError::Subscribe(S::BadPattern(..)) => (StatusCode::BAD_REQUEST, "invalid_topic"),
            ApiError::Subscribe(S::TooManyTopics { .. }) => {
                (StatusCode::BAD_REQUEST, "too_many_topics")
            }
            ApiError::Subscribe(S::BadParameter(..)) => {
                (StatusCode::BAD_REQUEST, "invalid_parameter")
            }
            ApiError::Subscribe(S::Log(e)) => log_parts(e),
            ApiError::Subscribe(S::Auth(e)) | ApiError::Auth(e) => auth_parts(e),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::BadBody(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
            ApiError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::ForbiddenOrigin(_) => (StatusCode::FORBIDDEN, "forbidden_origin"),
            ApiError::ForbiddenHost(_) => (StatusCode::FORBIDDEN, "forbidden_host"),
            ApiError::NotFound | ApiError::UnknownConnection(_) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            ApiError::BadPattern(..) => (StatusCode::BAD_REQUEST, "invalid_topic"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        }
    }
}

fn publish_parts(e: &PublishError) -> (StatusCode, &'static str) {
    use PublishError as P;
    match e {
        P::NoDestination => (StatusCode::BAD_REQUEST, "no_destination"),
        P::BadTopic(..) => (StatusCode::BAD_REQUEST, "invalid_topic"),
        P::BadEventName(..) => (StatusCode::BAD_REQUEST, "invalid_event"),
        P::BadField(..) => (StatusCode::BAD_REQUEST, "invalid_field"),
        P::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        P::Unsupported(_) => (StatusCode::BAD_REQUEST, "not_supported"),
        P::EmptyBatch | P::BatchTooLarge(_) => (StatusCode::BAD_REQUEST, "invalid_batch"),
        P::InBatch { source, .. } => publish_parts(source),
        P::Auth(e) => auth_parts(e),
        P::Log(e) => log_parts(e),
    }
}

fn auth_parts(e: &AuthError) -> (StatusCode, &'static str) {
    match e {
        AuthError::Missing(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
        AuthError::Invalid(_) => (StatusCode::UNAUTHORIZED, "invalid_token"),
        AuthError::Expired => (StatusCode::UNAUTHORIZED, "token_expired"),
        AuthError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
    }
}

fn log_parts(e: &LogError) -> (StatusCode, &'static str) {
    match e {
        LogError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        LogError::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        if status.is_server_error() {
            tracing::error!(%status, error = %self, "request failed");
        }
        let body = serde_json::json!({ "error": code, "message": self.to_string() });
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match (status, &self) {
            (StatusCode::SERVICE_UNAVAILABLE, _) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            (StatusCode::UNAUTHORIZED, _) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            (_, ApiError::RateLimited(wait)) => {
                let secs = (wait.as_millis() as u64).div_ceil(1000).max(1);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            _ => {}
        }
        response
    }
}
