//! `GET /v1/events` served straight on the socket.
//!
//! An idle SSE stream is most of what a push hub holds, and under hyper
//! every one keeps an 8 KiB read buffer, an 8 KiB write buffer for response
//! heads and a ~4 KiB connection task for its whole life (measured with
//! heaptrack; docs/BENCHMARKS.md). A subscriber sends one request and then
//! only reads. So the accept loop hands connections whose first bytes are
//! `GET /v1/events` to this module instead: it reads the request head into
//! a buffer it frees at once, asks the same axum router for the response
//! (auth, limits, refusals and errors are unchanged), writes the head and
//! then each body chunk with chunked framing, and closes the connection
//! when the body ends. Meanwhile it reads the socket into a few bytes only
//! to notice the client leaving. One request per connection
//! (`Connection: close`): EventSource and every SSE client open a
//! connection per stream anyway.
//!
//! The socket itself is shared (`delivery/outlet.rs`): while the stream is
//! idle, the courier writes its events into it, and a write it left
//! unfinished is sent from here before anything else.
//!
//! Anything else (other paths, HTTP/2, a head too slow to show its first
//! bytes) stays on hyper.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use bytes::{BufMut, Bytes, BytesMut};
use herald_wire::chunked::{ChunkHead, LAST_CHUNK};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tower::ServiceExt;

use crate::delivery::outlet::{parts, try_write_parts, unsent, Outlet, Written};
use crate::delivery::stream::EventSource;
use crate::http::events::StreamSlot;

/// What a connection's first bytes must be for this path (then `?` or a
/// space).
pub(super) const PREFIX: &[u8] = b"GET /v1/events";

/// What one socket may take: head size, time to send the head, time
/// without progress while writing.
pub(super) struct Bounds {
    pub max_head: usize,
    pub head_timeout: Duration,
    pub write_timeout: Option<Duration>,
    /// Turns to open a stream, shared by every socket (see [`Openings`]).
    pub openings: Openings,
}

/// A stream whose response head is written: the future, run as a task
/// of its own, that sends the body until it ends, the client leaves or
/// the hub drops the connection (`kill`), then closes.
///
/// Written by hand rather than as an `async fn`, for the state an idle
/// stream keeps (most of its life, in every stream's task): the socket,
/// the body, the hub's switch to drop it and a few words. A write the
/// socket does not take at once goes to a boxed [`Write`] with its timer,
/// so those sit only in the streams that wait to write.
pub(super) struct Streaming {
    /// The socket, shared with the courier, which writes into it while
    /// the stream is idle (`delivery/outlet.rs`).
    outlet: Arc<Outlet>,
    body: Source,
    /// The body ended: what is left is the last chunk (in `write`) and
    /// the shutdown.
    ended: bool,
    write_timeout: Option<Duration>,
    write: Option<Box<Write>>,
    kill: crate::Hangup,
}

/// A response's body as a stream of bytes: the hub's stream itself for
/// an SSE stream (taken from its [`StreamSlot`], past axum's body layers),
/// else axum's body (refusals, errors), read through a box of its own.
type Source = crate::delivery::stream::EventStream;

/// Axum's body as a [`Source`]: its data frames, ending at its end or
/// its first error (a body that fails ends where it stands).
fn axum_source(body: Body) -> Source {
    Box::pin(Plain(Box::pin(futures_util::StreamExt::scan(
        body.into_data_stream(),
        (),
        |(), data| std::future::ready(data.ok()),
    ))))
}

/// A body that is not the hub's stream (a refusal, an error): it takes no
/// socket.
struct Plain(Pin<Box<dyn futures_util::Stream<Item = Bytes> + Send>>);

impl futures_util::Stream for Plain {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.0.as_mut().poll_next(cx)
    }
}

impl EventSource for Plain {}

/// What is left of one write the socket did not take at once.
struct Write {
    /// Bytes a courier's write left unsent, which go first.
    before: Option<Bytes>,
    head: Option<ChunkHead>,
    data: Bytes,
    /// Bytes of `head`, `data` and the chunk's end that went already.
    sent: usize,
    /// Set while the socket takes nothing; moved on by each write that
    /// makes progress.
    deadline: Option<Pin<Box<Sleep>>>,
}

/// Answers one subscribe request on `stream` up to its response head.
/// `None`: the answer is complete (a refusal, or no request came) and the
/// connection closes.
///
/// Reading the head, routing and writing the response head take far more
/// state than streaming the body, and only for a moment: the caller runs
/// this in the accept task and the body in a task of its own
/// (the [`Streaming`] future), so an idle stream holds a small task.
pub(super) async fn open(
    mut stream: TcpStream,
    addr: SocketAddr,
    router: axum::Router,
    handle: crate::Hangup,
    bounds: Bounds,
    pending: super::PendingHead,
) -> io::Result<Option<Streaming>> {
    let write_timeout = bounds.write_timeout;
    let kill = handle.clone();
    let answered = Box::pin(answer(&mut stream, addr, router, handle, bounds, pending));
    Ok(answered.await?.map(|(mut body, chunked)| {
        let outlet = Arc::new(Outlet::new(stream, chunked));
        body.as_mut().attach(outlet.clone());
        Streaming {
            outlet,
            body,
            ended: false,
            write_timeout,
            write: None,
            kill,
        }
    }))
}

impl Future for Streaming {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Nothing in it is pinned: every field is `Unpin`.
        let this = self.get_mut();
        if this.kill.poll_hung_up(cx).is_ready() {
            tracing::debug!(peer = ?this.outlet.socket().peer_addr().ok(), "connection dropped by the hub");
            return Poll::Ready(());
        }
        let sent = send(
            &this.outlet,
            &mut this.body,
            &mut this.ended,
            this.write_timeout,
            &mut this.write,
            cx,
        );
        match sent {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(err)) => {
                tracing::debug!(peer = ?this.outlet.socket().peer_addr().ok(), %err, "stream ended with an error");
                Poll::Ready(())
            }
        }
    }
}

/// Sends the body as it comes, until it ends or the client leaves, or the
/// socket accepts no bytes for `write_timeout`; then the last chunk and
/// the shutdown.
fn send(
    outlet: &Outlet,
    body: &mut Source,
    ended: &mut bool,
    write_timeout: Option<Duration>,
    write: &mut Option<Box<Write>>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    let stream = outlet.socket();
    loop {
        if let Some(pending) = write.as_mut() {
            ready!(write_rest(stream, pending, write_timeout, cx))?;
            *write = None;
        }
        if *ended {
            // Nothing more goes out: the write side closes.
            return Poll::Ready(socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write));
        }
        let next = next_chunk(stream, body, cx);
        // What a courier's write left goes before anything else; it was
        // left before the body took its socket back, so before whatever
        // the body gave now.
        let before = outlet.take_leftover();
        let (head, data) = match next {
            Poll::Pending if before.is_none() => return Poll::Pending,
            Poll::Pending => (None, Bytes::new()),
            Poll::Ready(Next::Data(data)) => {
                (outlet.chunked().then(|| ChunkHead::new(data.len())), data)
            }
            Poll::Ready(Next::End) => {
                *ended = true;
                match outlet.chunked() {
                    true => (None, Bytes::from_static(LAST_CHUNK)),
                    false => (None, Bytes::new()),
                }
            }
            Poll::Ready(Next::Gone) => return Poll::Ready(Ok(())),
        };
        let whole = parts(before.as_deref(), head.as_ref(), &data);
        if let Written::Part(sent) = try_write_parts(stream, &whole)? {
            // The socket is full: the rest waits for room.
            *write = Some(Box::new(Write {
                before,
                head,
                data,
                sent,
                deadline: None,
            }));
        }
    }
}

/// Reads the request head, takes the response from the router and writes
/// its head; returns the body still to send, and whether it is chunked.
async fn answer(
    stream: &mut TcpStream,
    addr: SocketAddr,
    router: axum::Router,
    handle: crate::Hangup,
    bounds: Bounds,
    pending: super::PendingHead,
) -> io::Result<Option<(Source, bool)>> {
    let head = tokio::time::timeout(bounds.head_timeout, read_head(stream, bounds.max_head)).await;
    drop(pending);
    let request = match head {
        Err(_) => return Ok(None),
        Ok(Err(Bad(status))) => {
            let answer = Response::builder()
                .status(status)
                .body(Body::empty())
                .expect("a status and no headers");
            return write_head(stream, answer, true).await.map(Some);
        }
        Ok(Ok(request)) => request,
    };
    let mut request = request;
    // HTTP/1.0 has no chunked encoding: its body runs to the close.
    let chunked = request.version() != axum::http::Version::HTTP_10;
    request.extensions_mut().insert(ConnectInfo(addr));
    request.extensions_mut().insert(handle);
    let mut turn = bounds.openings.take_turn().await;
    let routed = router.oneshot(request);
    tokio::pin!(routed);
    let response = tokio::select! {
        response = &mut routed => response,
        () = tokio::time::sleep(OPENING_TURN) => {
            // Waiting for something (a key set being fetched): the turn
            // goes to the next stream meanwhile.
            turn = None;
            (&mut routed).await
        }
    }
    .unwrap_or_else(|never| match never {});
    let answered = write_head(stream, response, chunked).await.map(Some);
    drop(turn);
    answered
}

/// Streams opening at once, at most.
///
/// Opening a stream (auth, registering, the first state page, the head,
/// then in the same turn the first chunks of its replay until the socket
/// is full) takes a few hundred µs. When a thousand subscribers arrive
/// together, tokio queues all of those turns first in, first out, and a
/// request arriving meanwhile (a publish, `/healthz`) waited for every one
/// of them: 110 to 230 ms on one core (`bench/floods`, `nonreaders`). A
/// stream takes a turn here, then yields before opening: at most this many
/// openings are queued at any time, and the others wait parked.
pub(super) const MAX_OPENING: usize = 32;

/// Longest a stream holds its turn while its route waits (for a key set
/// being fetched, say): past it the turn is given back and the route goes
/// on without it.
const OPENING_TURN: Duration = Duration::from_millis(20);

/// The turns to open a stream, shared by the sockets a server accepts.
#[derive(Clone)]
pub(super) struct Openings(std::sync::Arc<tokio::sync::Semaphore>);

impl Default for Openings {
    fn default() -> Openings {
        Openings(std::sync::Arc::new(tokio::sync::Semaphore::new(
            MAX_OPENING,
        )))
    }
}

impl Openings {
    async fn take_turn(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let turn = self.0.clone().acquire_owned().await.ok();
        // Queued behind the openings under way, holding the turn: the
        // workers' queues never hold more than `MAX_OPENING` of them.
        tokio::task::yield_now().await;
        turn
    }
}

/// Why a request head was refused: answered with this status and closed.
struct Bad(StatusCode);

impl From<io::Error> for Bad {
    fn from(_: io::Error) -> Bad {
        Bad(StatusCode::BAD_REQUEST)
    }
}

async fn read_head(stream: &mut TcpStream, max_head: usize) -> Result<Request<Body>, Bad> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.len() >= max_head {
            return Err(Bad(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().min(max_head - buf.len()).max(1024));
        }
        let before = buf.len();
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(Bad(StatusCode::BAD_REQUEST));
        }
        // The head is parsed only once its end may have arrived: parsing
        // after every read would cost a client that sends a byte at a time
        // the square of its head's size.
        if !ends_head(&buf, before) {
            continue;
        }
        match parse_head(&buf)? {
            Some(request) => return Ok(request),
            None => continue,
        }
    }
}

/// Whether the bytes from `new` on (with the three before them) hold the
/// blank line that ends a head (`\n\n` or `\n\r\n`).
pub(super) fn ends_head(buf: &[u8], new: usize) -> bool {
    let from = new.saturating_sub(3);
    buf[from..].windows(2).any(|w| w == b"\n\n" || w == b"\n\r")
}

/// Most header fields in a head: hyper's limit, so that the lean path and
/// hyper take and refuse the same heads.
pub(super) const MAX_HEADERS: usize = 100;

/// A whole request head at the start of `buf`; `None` while it is partial.
fn parse_head(buf: &[u8]) -> Result<Option<Request<Body>>, Bad> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(_)) => build(&parsed).map(Some),
        Err(httparse::Error::TooManyHeaders) => {
            Err(Bad(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE))
        }
        Err(_) => Err(Bad(StatusCode::BAD_REQUEST)),
    }
}

/// Fuzzing entry: the status a head is refused with, if any (`None` for
/// partial or accepted heads).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_head(buf: &[u8]) -> Option<u16> {
    match parse_head(buf) {
        Ok(_) => None,
        Err(Bad(status)) => Some(status.as_u16()),
    }
}

fn build(parsed: &httparse::Request<'_, '_>) -> Result<Request<Body>, Bad> {
    let bad = || Bad(StatusCode::BAD_REQUEST);
    let version = match parsed.version {
        Some(1) => axum::http::Version::HTTP_11,
        Some(0) => axum::http::Version::HTTP_10,
        _ => return Err(bad()),
    };
    let mut request = Request::builder()
        .method(parsed.method.ok_or_else(bad)?)
        .uri(parsed.path.ok_or_else(bad)?)
        .version(version)
        .body(Body::empty())
        .map_err(|_| bad())?;
    let headers = request.headers_mut();
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| bad())?;
        headers.append(name, value);
    }
    Ok(request)
}

/// Writes the response head; returns its body and whether that goes out
/// chunked (its length is not known and `chunked` allows).
async fn write_head(
    stream: &mut TcpStream,
    response: Response<Body>,
    chunked: bool,
) -> io::Result<(Source, bool)> {
    let (parts, body) = response.into_parts();
    let length = http_body::Body::size_hint(&body).exact();
    let body = match parts
        .extensions
        .get::<StreamSlot>()
        .and_then(StreamSlot::take)
    {
        // The body, which would have read the stream, goes unread.
        Some(stream) => stream.into_inner(),
        None => axum_source(body),
    };
    let mut head = BytesMut::with_capacity(256);
    status_line(&mut head, parts.status);
    write_headers(&mut head, &parts.headers);
    match length {
        Some(n) => {
            head.put_slice(b"content-length: ");
            head.put_slice(n.to_string().as_bytes());
            head.put_slice(b"\r\n");
        }
        None if chunked => head.put_slice(b"transfer-encoding: chunked\r\n"),
        None => {}
    }
    head.put_slice(b"connection: close\r\n\r\n");
    stream.write_all(&head).await?;
    Ok((body, chunked && length.is_none()))
}

/// What a stream waits for.
enum Next {
    /// Data to send.
    Data(Bytes),
    /// The body ended, or failed: a body that fails ends the response
    /// where it stands.
    End,
    /// The client left (or its socket failed).
    Gone,
}

/// The body's next data, or the client's leaving. Nothing more is expected
/// from a subscriber: what it sends is dropped, and its end (or an error)
/// ends the stream.
///
/// The body is asked first: asking it is how it learns that what it gave
/// last was written (the writer then reports the messages that waited for
/// the user as delivered), and a client that read them and left at once
/// must not skip that.
fn next_chunk(stream: &TcpStream, body: &mut Source, cx: &mut Context<'_>) -> Poll<Next> {
    loop {
        match body.as_mut().poll_next(cx) {
            Poll::Pending => break,
            Poll::Ready(None) => return Poll::Ready(Next::End),
            Poll::Ready(Some(data)) if !data.is_empty() => return Poll::Ready(Next::Data(data)),
            // Empty data: nothing to send.
            Poll::Ready(Some(_)) => continue,
        }
    }
    loop {
        match stream.poll_read_ready(cx) {
            // The waker is registered: the client's bytes or end wake us.
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(Next::Gone),
            Poll::Ready(Ok(())) => {}
        }
        let mut scrap = [0u8; 64];
        match stream.try_read(&mut scrap) {
            // Read, or readiness was stale (now cleared): look again.
            Ok(n) if n > 0 => continue,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Ok(_) | Err(_) => return Poll::Ready(Next::Gone),
        }
    }
}

/// A response's status line, reason included.
pub(super) fn status_line(head: &mut impl BufMut, status: StatusCode) {
    head.put_slice(b"HTTP/1.1 ");
    head.put_slice(status.as_str().as_bytes());
    head.put_u8(b' ');
    head.put_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    head.put_slice(b"\r\n");
}

/// A response's header fields, without those of its framing (the socket
/// paths write their own length and connection fields).
pub(super) fn write_headers(head: &mut impl BufMut, headers: &HeaderMap) {
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        head.put_slice(name.as_str().as_bytes());
        head.put_slice(b": ");
        head.put_slice(value.as_bytes());
        head.put_slice(b"\r\n");
    }
}

/// Writes what is left of `pending`, as the socket takes it; each write
/// that makes progress restarts the clock of `write_timeout`.
fn write_rest(
    stream: &TcpStream,
    pending: &mut Write,
    write_timeout: Option<Duration>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    loop {
        let whole = parts(
            pending.before.as_deref(),
            pending.head.as_ref(),
            &pending.data,
        );
        let parts = unsent(whole, pending.sent);
        if parts.iter().all(|p| p.is_empty()) {
            return Poll::Ready(Ok(()));
        }
        let progress = match try_write_parts(stream, &parts)? {
            Written::All => return Poll::Ready(Ok(())),
            Written::Part(n) => n,
        };
        if progress > 0 {
            pending.sent += progress;
            if let (Some(deadline), Some(limit)) = (pending.deadline.as_mut(), write_timeout) {
                deadline.as_mut().reset(tokio::time::Instant::now() + limit);
            }
            continue;
        }
        // Full: wait for room (readiness was cleared by the write that
        // would have blocked), or for the deadline.
        match stream.poll_write_ready(cx) {
            Poll::Ready(Ok(())) => continue,
            Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
            Poll::Pending => {}
        }
        let Some(limit) = write_timeout else {
            return Poll::Pending;
        };
        let deadline = pending
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        return match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::RawQuery;
    use axum::routing::get;
    use std::sync::Arc;

    #[test]
    fn a_heads_end_is_seen_wherever_the_reads_split_it() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\nHost: a\n\n",
        ] {
            for split in 0..head.len() {
                // Bytes up to `split` were looked at already, without the end.
                assert!(ends_head(head, split), "{head:?} split at {split}");
            }
            let partial = &head[..head.len() - 2];
            assert!(!ends_head(partial, 0), "{partial:?}");
        }
    }

    #[tokio::test]
    async fn at_most_max_opening_turns_are_held() {
        let openings = Openings::default();
        let mut held = Vec::new();
        for _ in 0..MAX_OPENING {
            held.push(openings.take_turn().await);
        }
        let next = openings.take_turn();
        tokio::pin!(next);
        let waited = tokio::time::timeout(Duration::from_millis(100), &mut next).await;
        assert!(waited.is_err(), "a turn past the bound was given");
        held.pop();
        assert!(next.await.is_some());
    }

    /// Serves every accepted socket with `serve`, as the accept loop does.
    async fn server(router: axum::Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let openings = Openings::default();
        let heads = super::super::PendingHeads::default();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = listener.accept().await.unwrap();
                let (pending, _) = heads.join();
                let bounds = Bounds {
                    max_head: 64 * 1024,
                    head_timeout: Duration::from_secs(10),
                    write_timeout: None,
                    openings: openings.clone(),
                };
                let router = router.clone();
                tokio::spawn(async move {
                    let opened = open(stream, peer, router, crate::Hangup::new(), bounds, pending);
                    if let Ok(Some(streaming)) = opened.await {
                        streaming.await;
                    }
                });
            }
        });
        addr
    }

    async fn subscribe(addr: SocketAddr, query: &str) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!("GET /v1/events?{query} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_route_that_waits_gives_its_turn_back() {
        // Every `slow` route waits for good, holding a turn if it kept it.
        let never = Arc::new(tokio::sync::Notify::new());
        let router = axum::Router::new().route(
            "/v1/events",
            get(move |RawQuery(query): RawQuery| {
                let never = never.clone();
                async move {
                    if query.as_deref() == Some("topic=slow") {
                        never.notified().await;
                    }
                    "opened"
                }
            }),
        );
        let addr = server(router).await;
        let mut slow = Vec::new();
        for _ in 0..MAX_OPENING + 1 {
            slow.push(subscribe(addr, "topic=slow").await);
        }
        let mut fast = subscribe(addr, "topic=fast").await;
        let mut answer = Vec::new();
        let read = async {
            let mut buf = [0u8; 1024];
            while !answer.ends_with(b"opened") {
                let n = fast.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed without an answer");
                answer.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the fast subscribe waited behind routes that hold their turns");
        assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
    }
}
