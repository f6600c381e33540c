//! The HTTP API: routes, and the handlers that turn requests into hub calls.
//!
//! Handlers stay thin: parse, call [`Hub`], map the outcome. The one place
//! that knows SSE response headers and temporary refusals is `events.rs`.

mod error;
mod events;
mod ops;
mod publish;

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use events::events;
pub use publish::publish;

use crate::hub::Hub;

/// Every endpoint of the hub, ready to serve or to nest in an application.
pub fn router(hub: Hub) -> Router {
    let body_limit = hub.config().limits.max_body_bytes;
    Router::new()
        .route("/v1/events", get(events))
        .route("/v1/publish", post(publish))
        .route("/v1/stats", get(ops::stats))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(hub)
}

/// The client's address, when the server recorded it (`ConnectInfo`).
/// Embedding applications get it by serving with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip()),
        ))
    }
}

/// A switch that drops the client's TCP connection, put in the request
/// extensions by [`Server`](crate::Server). For HTTP/2 it drops the whole
/// connection, every stream on it.
#[derive(Debug, Clone)]
pub struct TransportHandle(pub Option<CancellationToken>);

impl<S: Send + Sync> FromRequestParts<S> for TransportHandle {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(TransportHandle(
            parts.extensions.get::<CancellationToken>().cloned(),
        ))
    }
}

/// Dev mode (no auth key): publish and admin calls from loopback only.
pub(crate) fn require_trusted(hub: &Hub, peer: PeerAddr) -> Result<(), ApiError> {
    if hub.config().dev_mode() && !Hub::is_trusted_in_dev_mode(peer.0) {
        return Err(ApiError::Forbidden(
            "no auth key is configured (dev mode): this call is accepted from loopback only",
        ));
    }
    Ok(())
}
