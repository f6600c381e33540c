//! The HTTP API: routes, and the handlers that turn requests into hub calls.
//!
//! Handlers stay thin: parse, call [`Hub`], map the outcome. The one place
//! that knows SSE response headers and temporary refusals is `events.rs`.

pub(crate) mod ack;
mod console;
mod error;
pub(crate) mod events;
pub(crate) mod guard;
pub(crate) mod openapi;
mod ops;
mod poll;
pub(crate) mod publish;
mod state;

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method};
use axum::routing::{delete, get, patch, post, put};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::access::auth::Identity;

pub(crate) use error::ApiError;
pub(crate) use events::events;
#[cfg(feature = "fuzzing")]
pub use publish::fuzz_publish;
pub(crate) use publish::publish;

use crate::hub::Hub;

/// Every endpoint of the hub, ready to serve or to nest in an application.
pub(crate) fn router(hub: Hub) -> Router {
    let body_limit = hub.config().limits.max_body_bytes;
    let cors = cors_layer(&hub.config().cors.allowed_origins);
    let router = Router::new()
        .route("/v1/events", get(events))
        .route("/v1/publish", post(publish))
        .route("/v1/poll", get(poll::poll))
        .route("/v1/ack", post(ack::ack))
        .route("/v1/stats", get(ops::stats))
        .route("/v1/presence/{*pattern}", get(ops::presence))
        .route("/v1/topics", get(ops::topics))
        .route("/v1/state/{*path}", get(state::get))
        .route("/v1/state/{*path}", put(state::put))
        .route("/v1/state/{*path}", patch(state::patch))
        .route("/v1/state/{*path}", delete(state::delete))
        .route("/console", get(console::redirect))
        .route("/console/", get(console::page))
        .route("/console/app.js", get(console::script))
        .route("/v1/users/{user}", get(ops::user))
        .route("/v1/users/{user}/connections", delete(ops::close_user))
        .route("/v1/connections/{id}", delete(ops::close_connection))
        .route("/v1/connections/{id}/subscriptions", post(ops::resubscribe))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/openapi.json", get(openapi::openapi_json))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            hub.clone(),
            guard::browser_guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            hub.clone(),
            guard::client_address,
        ))
        .layer(axum::middleware::from_fn_with_state(
            hub.clone(),
            ops::count_refusals,
        ))
        .layer(access_log())
        .with_state(hub);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Requests at debug level: method, path and status. Never the query
/// string: it may hold an `access_token`.
fn access_log() -> tower_http::trace::TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    impl Fn(&axum::http::Request<axum::body::Body>) -> tracing::Span + Clone,
> {
    use tower_http::trace::{DefaultOnFailure, DefaultOnRequest, DefaultOnResponse, TraceLayer};
    TraceLayer::new_for_http()
        .make_span_with(|req: &axum::http::Request<axum::body::Body>| {
            tracing::debug_span!("request", method = %req.method(), path = %req.uri().path())
        })
        .on_request(DefaultOnRequest::new().level(tracing::Level::DEBUG))
        .on_response(DefaultOnResponse::new().level(tracing::Level::DEBUG))
        .on_failure(DefaultOnFailure::new().level(tracing::Level::WARN))
}

/// CORS from `cors.allowed_origins`: a list of origins gets credentials
/// (cookies, Authorization); `"*"` alone allows any origin, never with
/// credentials.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let base = CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::CACHE_CONTROL,
            header::HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([header::RETRY_AFTER, header::ETAG])
        .max_age(std::time::Duration::from_secs(600));
    Some(if origins.iter().any(|o| o == "*") {
        base.allow_origin(AllowOrigin::any())
    } else {
        let list = origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect::<Vec<_>>();
        base.allow_origin(AllowOrigin::list(list))
            .allow_credentials(true)
    })
}

/// The caller of a request: its verified identity and address.
///
/// Credentials are read from, in order: `Authorization: Bearer`, the cookie
/// `auth.cookie_name`, the `access_token` query parameter (for browsers'
/// EventSource, which cannot set headers). The token's value is never
/// logged.
pub(crate) struct Caller {
    pub identity: Identity,
    pub peer: Option<IpAddr>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller
where
    Hub: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let hub = Hub::from_ref(state);
        let PeerAddr(peer) = PeerAddr::from_request_parts(parts, state)
            .await
            .unwrap_or(PeerAddr(None));
        Caller::resolve(&hub, peer, &parts.headers, &parts.uri).await
    }
}

impl Caller {
    /// The caller of a request with these headers and URI, from `peer`
    /// (after `trusted_proxies`): what the extractor and the server's
    /// socket path both run.
    pub(crate) async fn resolve(
        hub: &Hub,
        peer: Option<IpAddr>,
        headers: &axum::http::HeaderMap,
        uri: &axum::http::Uri,
    ) -> Result<Caller, ApiError> {
        let token = credentials(headers, uri, &hub.config().auth.cookie_name);
        let identity = hub.authenticate(token.as_deref()).await?;
        Ok(Caller { identity, peer })
    }
}

fn credentials(
    headers: &axum::http::HeaderMap,
    uri: &axum::http::Uri,
    cookie_name: &str,
) -> Option<String> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some((scheme, token)) = value.split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
                return Some(token.trim().to_owned());
            }
        }
    }
    for cookies in headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for pair in cookies.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=') {
                if name == cookie_name && !value.is_empty() {
                    return Some(value.to_owned());
                }
            }
        }
    }
    let query = uri.query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// The client's address, when the server recorded it (`ConnectInfo`).
/// Embedding applications get it by serving with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub Option<IpAddr>);

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
pub(crate) struct TransportHandle(pub Option<crate::Hangup>);

impl<S: Send + Sync> FromRequestParts<S> for TransportHandle {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(TransportHandle(
            parts.extensions.get::<crate::Hangup>().cloned(),
        ))
    }
}

/// A subscribe request from the query, the `Last-Event-ID` header (which
/// wins over `lastEventId`) and the caller: what `/v1/events` and
/// `/v1/poll` share.
pub(crate) fn subscribe_request(
    query: &str,
    headers: &axum::http::HeaderMap,
    caller: Caller,
) -> Result<crate::requests::subscribe::SubscribeRequest, ApiError> {
    let mut request = crate::requests::subscribe::SubscribeRequest::from_query(query)?;
    if let Some(id) = headers.get("last-event-id") {
        // A header that is not text cannot be an id this hub issued: it is
        // answered as an unknown id.
        request.last_event_id = Some(id.to_str().unwrap_or("?").to_owned());
    }
    request.peer = caller.peer;
    request.identity = Some(caller.identity);
    Ok(request)
}

/// Dev mode (no auth key): publish and admin calls from loopback only.
pub(crate) fn require_loopback_in_dev_mode(hub: &Hub, caller: &Caller) -> Result<(), ApiError> {
    if hub.dev_mode() && !Hub::is_trusted_in_dev_mode(caller.peer) {
        return Err(ApiError::Forbidden(
            "no auth key is configured (dev mode): this call is accepted from loopback only",
        ));
    }
    Ok(())
}

/// Calls that publish (events, state changes): loopback only in dev mode,
/// and the publisher's rate limit.
pub(crate) fn require_publisher(hub: &Hub, caller: &Caller) -> Result<(), ApiError> {
    require_loopback_in_dev_mode(hub, caller)?;
    hub.rates()
        .check_publish(&caller.identity.rate_key(caller.peer))
        .map_err(ApiError::RateLimited)
}

/// Admin calls: `herald.admin` or an API key (loopback in dev mode).
pub(crate) fn require_admin(hub: &Hub, caller: &Caller) -> Result<(), ApiError> {
    require_loopback_in_dev_mode(hub, caller)?;
    match (caller.identity.admin, caller.identity.proof) {
        (true, _) => Ok(()),
        (false, crate::access::auth::Proof::Anonymous) => {
            Err(ApiError::Auth(crate::access::auth::AuthError::Missing(
                "admin calls need an admin token or an API key".into(),
            )))
        }
        (false, _) => Err(ApiError::Auth(crate::access::auth::AuthError::Forbidden(
            "the token is not an admin token (herald.admin)".into(),
        ))),
    }
}
