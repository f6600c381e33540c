//! `GET /v1/events`: the SSE endpoint.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use parking_lot::Mutex;

use super::openapi::ErrorBody;
use super::{ApiError, Caller, TransportHandle};
use crate::delivery::stream::EventBody;
use crate::hub::{Hub, Subscription};
use crate::requests::subscribe::Refusal;
use crate::values::sse;

/// Opens an event stream (SPEC §3). Mount it with any axum router whose
/// state is a [`Hub`].
#[utoipa::path(get, path = "/v1/events", tag = "subscribe",
    params(crate::http::openapi::SubscribeParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this id (wins over lastEventId)")),
    responses(
        (status = 200, description = "The stream: `retry:`, `herald.connected`, then events. A temporary refusal (limits, shutdown) is also 200, with `Retry-After` and one `herald.refused` event", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad pattern or parameter", body = ErrorBody), (status = 401, description = "Credentials missing, invalid or expired", body = ErrorBody), (status = 403, description = "Not allowed", body = ErrorBody),
    ))]
pub(crate) async fn events(
    State(hub): State<Hub>,
    caller: Caller,
    transport: TransportHandle,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut request = super::subscribe_request(query.as_deref().unwrap_or(""), &headers, caller)?;
    request.transport = transport.0;
    Ok(match hub.subscribe(request).await? {
        Subscription::Stream { body, .. } => {
            let slot = StreamSlot(Arc::new(Mutex::new(Some(body))));
            let mut response = sse_response(Body::from_stream(futures_util::StreamExt::map(
                slot.clone(),
                Ok::<_, std::convert::Infallible>,
            )));
            response.extensions_mut().insert(slot);
            response
        }
        Subscription::Refused(refusal) => refused(refusal),
    })
}

/// The hub's stream of an SSE response, beside the response's body.
///
/// Through axum the stream sits under a body box and the access log's
/// wrapper, each polled on every chunk. The socket path
/// (`server/sse_socket.rs`) takes the stream out of here and polls it
/// directly (the body it leaves behind then ends at once); hyper polls it
/// through the body, which reads it here. One of the two takes it, never
/// both.
#[derive(Clone)]
pub(crate) struct StreamSlot(Arc<Mutex<Option<EventBody>>>);

impl StreamSlot {
    /// The stream, unless the body has begun to read it.
    pub(crate) fn take(&self) -> Option<EventBody> {
        self.0.lock().take()
    }
}

impl Stream for StreamSlot {
    type Item = Bytes;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        match self.0.lock().as_mut() {
            Some(stream) => Pin::new(stream).poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

fn sse_response(body: Body) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// A temporary refusal: `200` so that EventSource retries by itself, with
/// `Retry-After`, a jittered `retry:`, one `herald.refused`, and the end.
fn refused(refusal: Refusal) -> Response {
    let mut buf = BytesMut::new();
    sse::write_retry(&mut buf, refusal.retry_after_ms);
    let data = serde_json::json!({
        "error": refusal.error,
        "message": refusal.message,
        "retry_after_ms": refusal.retry_after_ms,
    });
    sse::write_event(&mut buf, None, Some("herald.refused"), &data.to_string());
    let mut response = sse_response(Body::from(buf.freeze()));
    let secs = refusal.retry_after_ms.div_ceil(1000).max(1);
    let h = response.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    // Close the connection too: a refused client holds nothing here.
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
