//! `POST /v1/publish` served straight on the socket.
//!
//! A publisher's connection sends one small request after another, and
//! under hyper and the router each costs about as much as the publish
//! itself (a 404 through the same stack runs at 15 µs of CPU a request;
//! docs/BENCHMARKS.md, "W4"). So the accept loop hands connections whose
//! first bytes are `POST /v1/publish` to this module: a keep-alive loop that
//! reads requests into one buffer, parses each head with httparse, runs the
//! very checks the router runs (the browser guard, `trusted_proxies`, the
//! caller's credentials, the publisher's rate, the body limit) and the
//! handler's own code ([`publish_body`]), and writes the answer. Requests
//! already read (pipelined) are answered in one write.
//!
//! Only the plain case is taken here: HTTP/1.1, `POST /v1/publish`, a body
//! sized by `Content-Length`. A request that is anything else (another path,
//! a chunked body, `Expect`, an upgrade, a browser's `Origin` when CORS
//! headers are due) hands the connection, with what was read of it, to
//! hyper for the rest of its life, so every answer stays the router's.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::sse_socket::{ends_head, status_line, write_headers, MAX_HEADERS};
use crate::http::guard;
use crate::http::publish::{publish_body, Published};
use crate::http::{ApiError, Caller};
use crate::hub::Hub;

/// What a connection's first bytes must be for this path (then `?` or a
/// space).
pub(super) const PREFIX: &[u8] = b"POST /v1/publish";

/// A connection given to hyper: the socket, and what was read from it and
/// not yet answered (hyper reads that first).
pub(super) struct Handover {
    read: Bytes,
    stream: TcpStream,
}

impl Handover {
    /// A socket nothing was read from.
    pub(super) fn fresh(stream: TcpStream) -> Handover {
        Handover {
            read: Bytes::new(),
            stream,
        }
    }
}

/// What one publisher's connection may take.
pub(super) struct Bounds {
    pub max_head: usize,
    /// When the first request's head must be whole.
    pub first_head_by: Instant,
    /// Time for each later head, from its first byte.
    pub head_timeout: Duration,
}

/// Serves publishes on `stream` until the client closes, the hub shuts
/// down (between requests), a request is refused in a way that ends the
/// connection, or a request is not for this path: then the connection is
/// handed back, for hyper.
pub(super) async fn serve(
    mut stream: TcpStream,
    addr: SocketAddr,
    hub: Hub,
    bounds: Bounds,
    pending: super::PendingHead,
) -> io::Result<Option<Handover>> {
    let mut pending = Some(pending);
    let mut buf = BytesMut::with_capacity(2048);
    let mut out = Vec::with_capacity(512);
    let mut head_by = Some(bounds.first_head_by);
    // Where bytes not yet looked at for a head's end begin: a head is
    // parsed only once its end may have arrived (parsing after every read
    // would cost a client that sends a byte at a time the square of its
    // head's size).
    let mut unseen = 0;
    loop {
        // A whole head, or more bytes.
        let parsed = match buf.is_empty() || !ends_head(&buf, unseen) {
            true => Parsed::Partial,
            false => parse_head(&buf),
        };
        let head = match parsed {
            Parsed::Partial => {
                if buf.len() >= bounds.max_head {
                    refuse(
                        &mut stream,
                        &mut out,
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    )
                    .await?;
                    return Ok(None);
                }
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                    out.clear();
                }
                let more = match head_by {
                    Some(by) => tokio::time::timeout_at(by, read_more(&mut stream, &mut buf))
                        .await
                        .unwrap_or(Ok(Read::Ended))?,
                    // Between requests: waits for the next as long as the
                    // client keeps the connection, unless the hub stops.
                    None => tokio::select! {
                        more = read_more(&mut stream, &mut buf) => more?,
                        () = hub.shutdown_started() => Read::Ended,
                    },
                };
                match more {
                    Read::Ended => return Ok(None),
                    Read::Some(from) => {
                        unseen = from;
                        head_by.get_or_insert_with(|| Instant::now() + bounds.head_timeout);
                    }
                }
                continue;
            }
            Parsed::Bad(status) => {
                refuse(&mut stream, &mut out, status).await?;
                return Ok(None);
            }
            Parsed::Other => {
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                }
                return Ok(Some(Handover {
                    read: buf.freeze(),
                    stream,
                }));
            }
            Parsed::Publish(head) => head,
        };
        // Its place among sockets waiting for a head is given back.
        pending.take();
        let head_bytes = buf.split_to(head.len).freeze();
        let Ok((uri, headers)) = head.build(&head_bytes) else {
            refuse(&mut stream, &mut out, StatusCode::BAD_REQUEST).await?;
            return Ok(None);
        };
        let max_body = hub.config().limits.max_body_bytes;
        let body = if head.body_len > max_body as u64 {
            // Not read: the connection ends after the answer.
            Err(ApiError::BodyTooLarge(max_body))
        } else {
            let len = head.body_len as usize;
            while buf.len() < len {
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                    out.clear();
                }
                buf.reserve(len - buf.len());
                if let Read::Ended = read_more(&mut stream, &mut buf).await? {
                    return Ok(None);
                }
            }
            Ok(buf.split_to(len).freeze())
        };
        // A body refused unread ends the connection; what is still to come
        // of it is drained after the answer.
        let unread = match body {
            Ok(_) => 0,
            Err(_) => head.body_len.saturating_sub(buf.len() as u64),
        };
        let keep = body.is_ok() && !head.close;
        let answer = publish(&hub, addr, &uri, &headers, body).await;
        let keep = keep && !hub.is_shutting_down();
        write_answer(&hub, &mut out, answer, keep).await;
        if !keep {
            stream.write_all(&out).await?;
            let _ = stream.shutdown().await;
            if unread > 0 {
                linger(&mut stream, unread).await;
            }
            return Ok(None);
        }
        head_by = None;
        unseen = 0;
        if out.len() >= 64 * 1024 {
            stream.write_all(&out).await?;
            out.clear();
        }
    }
}

/// Longest a refused body is read and dropped after its answer.
const LINGER: Duration = Duration::from_secs(5);

/// Reads and drops up to `unread` bytes, for at most [`LINGER`]: a client
/// still sending the body it was refused gets to read the answer (a
/// socket closed with bytes unread answers them with a reset, which can
/// destroy the answer before the client reads it).
async fn linger(stream: &mut TcpStream, mut unread: u64) {
    let drain = async {
        let mut scrap = [0u8; 16 * 1024];
        while unread > 0 {
            match stream.read(&mut scrap).await {
                Ok(0) | Err(_) => break,
                Ok(n) => unread = unread.saturating_sub(n as u64),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// What the router would run for this request, from its layers in: the
/// client's address, the browser guard, the caller, the handler.
async fn publish(
    hub: &Hub,
    addr: SocketAddr,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, ApiError>,
) -> Result<Published, ApiError> {
    let peer = guard::client_ip(hub, addr.ip(), headers);
    guard::check(hub, &Method::POST, uri, headers)?;
    let caller = Caller::resolve(hub, Some(peer), headers, uri).await?;
    publish_body(hub, &caller, uri.query(), body).await
}

enum Read {
    /// Bytes were read, from this offset of the buffer on.
    Some(usize),
    /// The client closed (or its socket failed).
    Ended,
}

async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<Read> {
    if buf.capacity() - buf.len() < 512 {
        buf.reserve(2048);
    }
    let from = buf.len();
    match stream.read_buf(buf).await {
        Ok(0) => Ok(Read::Ended),
        Ok(_) => Ok(Read::Some(from)),
        Err(err) if err.kind() == io::ErrorKind::ConnectionReset => Ok(Read::Ended),
        Err(err) => Err(err),
    }
}

/// A request head at the start of the buffer, as far as this path cares.
enum Parsed {
    /// Not whole yet.
    Partial,
    /// Malformed: answered with this status, and the connection closes.
    Bad(StatusCode),
    /// Whole, and not one this path takes.
    Other,
    Publish(Head),
}

/// A publish's head: where its parts lie in the buffer.
struct Head {
    len: usize,
    target: (usize, usize),
    headers: Vec<(HeaderName, (usize, usize))>,
    body_len: u64,
    /// `Connection: close`: the answer is the last.
    close: bool,
}

fn parse_head(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut fields);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Bad(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        }
        Err(_) => return Parsed::Bad(StatusCode::BAD_REQUEST),
    };
    let (Some(method), Some(path), Some(1)) = (parsed.method, parsed.path, parsed.version) else {
        return Parsed::Other;
    };
    let ours = path
        .strip_prefix("/v1/publish")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('?'));
    if method != "POST" || !ours {
        return Parsed::Other;
    }
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - buf.as_ptr() as usize;
        (start, start + s.len())
    };
    let mut head = Head {
        len,
        target: at(path.as_bytes()),
        headers: Vec::with_capacity(parsed.headers.len()),
        body_len: 0,
        close: false,
    };
    let mut lengths = 0;
    for field in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else {
            return Parsed::Bad(StatusCode::BAD_REQUEST);
        };
        if name == header::CONTENT_LENGTH {
            lengths += 1;
            match std::str::from_utf8(field.value).ok().and_then(digits) {
                Some(n) => head.body_len = n,
                None => return Parsed::Bad(StatusCode::BAD_REQUEST),
            }
        } else if name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE
        {
            return Parsed::Other;
        } else if name == header::CONNECTION {
            for option in field.value.split(|&b| b == b',') {
                let option = option.trim_ascii();
                if option.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Other;
                }
                head.close |= option.eq_ignore_ascii_case(b"close");
            }
        } else if name == header::ORIGIN {
            // The CORS layer adds its headers to such answers: hyper's.
            return Parsed::Other;
        }
        head.headers.push((name, at(field.value)));
    }
    if lengths > 1 {
        return Parsed::Other;
    }
    Parsed::Publish(head)
}

/// Fuzzing entry: what the head parser says of `buf` holds together (a
/// refusal is 400 or 431; a publish's parts lie inside its head, and
/// building its URI and headers does not panic).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_head(buf: &[u8]) {
    match parse_head(buf) {
        Parsed::Bad(status) => assert!(matches!(status.as_u16(), 400 | 431), "{status}"),
        Parsed::Publish(head) => {
            assert!(head.len <= buf.len());
            let parts = std::iter::once(head.target).chain(head.headers.iter().map(|(_, at)| *at));
            for (start, end) in parts {
                assert!(
                    start <= end && end <= head.len,
                    "{start}..{end} of {}",
                    head.len
                );
            }
            let _ = head.build(&Bytes::copy_from_slice(&buf[..head.len]));
        }
        Parsed::Partial | Parsed::Other => {}
    }
}

/// A `Content-Length` value: digits only.
fn digits(value: &str) -> Option<u64> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

impl Head {
    /// The request's URI and headers, sharing the head's bytes.
    fn build(&self, bytes: &Bytes) -> Result<(Uri, HeaderMap), ()> {
        let part = |(start, end): (usize, usize)| bytes.slice(start..end);
        let uri = Uri::from_maybe_shared(part(self.target)).map_err(|_| ())?;
        let mut headers = HeaderMap::with_capacity(self.headers.len());
        for (name, at) in &self.headers {
            let value = HeaderValue::from_maybe_shared(part(*at)).map_err(|_| ())?;
            headers.append(name.clone(), value);
        }
        Ok((uri, headers))
    }
}

/// Appends the answer to `out`, as the router would send it.
async fn write_answer(
    hub: &Hub,
    out: &mut Vec<u8>,
    answer: Result<Published, ApiError>,
    keep: bool,
) {
    match answer {
        Ok(published) => {
            let mut body = Vec::with_capacity(32);
            published.write_json(&mut body);
            status_line(out, StatusCode::OK);
            out.extend_from_slice(b"content-type: application/json\r\n");
            end_head(out, body.len(), keep);
            out.extend_from_slice(&body);
            log_request(StatusCode::OK);
        }
        Err(err) => {
            let response = err.into_response();
            let (parts, body) = response.into_parts();
            hub.metrics().http_refused(parts.status.as_u16());
            let body = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap_or_default();
            status_line(out, parts.status);
            write_headers(out, &parts.headers);
            end_head(out, body.len(), keep);
            out.extend_from_slice(&body);
            log_request(parts.status);
        }
    }
}

/// The access log's line, as the router's layer words it (never the
/// query: it may hold an `access_token`).
fn log_request(status: StatusCode) {
    tracing::debug!(
        method = "POST",
        path = "/v1/publish",
        status = status.as_u16(),
        "finished processing request"
    );
}

/// A refusal of a head this path could not read; the connection closes.
async fn refuse(stream: &mut TcpStream, out: &mut Vec<u8>, status: StatusCode) -> io::Result<()> {
    status_line(out, status);
    end_head(out, 0, false);
    stream.write_all(out).await?;
    let _ = stream.shutdown().await;
    Ok(())
}

fn end_head(out: &mut Vec<u8>, body_len: usize, keep: bool) {
    use std::io::Write as _;
    let _ = write!(out, "content-length: {body_len}\r\n");
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(&http_date());
    out.extend_from_slice(b"\r\n");
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The `Date` header's value, formatted once a second per thread.
fn http_date() -> [u8; 29] {
    use std::cell::Cell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static DATE: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with(|date| {
        let (cached, text) = date.get();
        if cached == second {
            return text;
        }
        let mut text = [0u8; 29];
        let formatted = httpdate::fmt_http_date(now);
        let n = formatted.len().min(29);
        text[..n].copy_from_slice(&formatted.as_bytes()[..n]);
        date.set((second, text));
        text
    })
}

impl AsyncRead for Handover {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(out.remaining());
            out.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, out)
    }
}

impl AsyncWrite for Handover {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// One connection served by [`serve`] alone (no hyper behind it): the
    /// client's socket, and what `serve` ended with.
    async fn connect(
        hub: &Hub,
    ) -> (
        TcpStream,
        tokio::task::JoinHandle<io::Result<Option<Handover>>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (stream, addr) = accepted.unwrap();
        let (pending, _) = super::super::PendingHeads::default().join();
        let bounds = Bounds {
            max_head: 64 * 1024,
            first_head_by: Instant::now() + Duration::from_secs(10),
            head_timeout: Duration::from_secs(10),
        };
        let served = tokio::spawn(serve(stream, addr, hub.clone(), bounds, pending));
        (client.unwrap(), served)
    }

    fn hub() -> Hub {
        Hub::new(Config {
            memory: true,
            ..Config::default()
        })
        .unwrap()
    }

    fn publish(topic: &str, data: &str) -> String {
        format!(
            "POST /v1/publish?topic={topic} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{data}",
            data.len()
        )
    }

    #[tokio::test]
    async fn pipelined_publishes_are_answered_here() {
        let hub = hub();
        let (mut client, served) = connect(&hub).await;
        let sent: String = ["a", "b", "c"].iter().map(|d| publish("t", d)).collect();
        client.write_all(sent.as_bytes()).await.unwrap();
        client.shutdown().await.unwrap();
        let mut answers = String::new();
        client.read_to_string(&mut answers).await.unwrap();
        assert!(
            served.await.unwrap().unwrap().is_none(),
            "nothing handed over"
        );
        assert_eq!(
            answers.matches("HTTP/1.1 200 OK\r\n").count(),
            3,
            "{answers}"
        );
        let ids: Vec<&str> = answers
            .split("{\"id\":\"")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap())
            .collect();
        // Three events, answered in the order they were stored.
        let head = hub.stats().head;
        assert_eq!(ids.len(), 3, "{answers}");
        assert!(ids[0] != ids[1] && ids[1] != ids[2], "{answers}");
        assert_eq!(ids[2], head, "{answers}");
    }

    #[tokio::test]
    async fn anything_else_is_handed_over_with_what_was_read() {
        let hub = hub();
        let (mut client, served) = connect(&hub).await;
        let rest = format!(
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n{}",
            publish("t", "after")
        );
        client
            .write_all(format!("{}{rest}", publish("t", "before")).as_bytes())
            .await
            .unwrap();
        let handover = served.await.unwrap().unwrap().expect("handed over");
        assert_eq!(&handover.read[..], rest.as_bytes());
        let mut answer = vec![0u8; 4096];
        let n = client.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_ends_the_connection_even_when_read_whole() {
        let mut config = Config {
            memory: true,
            ..Config::default()
        };
        config.limits.max_body_bytes = 10;
        let hub = Hub::new(config).unwrap();
        let (mut client, served) = connect(&hub).await;
        let head = hub.stats().head;
        // Head and body arrive in one read: the body is in the buffer
        // whole, and must not be taken for the next head.
        let sent = publish("t", &"x".repeat(20)) + &publish("t", "after");
        client.write_all(sent.as_bytes()).await.unwrap();
        let mut answer = String::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), client.read_to_string(&mut answer));
        read.await.expect("the connection closes").unwrap();
        assert!(served.await.unwrap().unwrap().is_none());
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
        assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
        assert_eq!(hub.stats().head, head, "nothing published");
    }

    #[test]
    fn heads_this_path_leaves_to_hyper() {
        let with = |fields: &str| format!("POST /v1/publish HTTP/1.1\r\n{fields}\r\n");
        for other in [
            "GET /v1/publish HTTP/1.1\r\n\r\n".to_owned(),
            "POST /v1/publishers HTTP/1.1\r\n\r\n".to_owned(),
            "POST /v1/publish HTTP/1.0\r\n\r\n".to_owned(),
            with("Transfer-Encoding: chunked\r\n"),
            with("Expect: 100-continue\r\nContent-Length: 3\r\n"),
            with("Connection: Upgrade\r\nUpgrade: h2c\r\n"),
            with("Origin: http://localhost\r\n"),
            with("Content-Length: 3\r\nContent-Length: 3\r\n"),
        ] {
            assert!(
                matches!(parse_head(other.as_bytes()), Parsed::Other),
                "{other:?}"
            );
        }
        assert!(matches!(
            parse_head(with("Content-Length: -3\r\n").as_bytes()),
            Parsed::Bad(StatusCode::BAD_REQUEST)
        ));
        let Parsed::Publish(head) =
            parse_head(with("Connection: keep-alive, close\r\n").as_bytes())
        else {
            panic!("a publish")
        };
        assert!(head.close);
        assert!(matches!(
            parse_head(b"POST /v1/publish HTTP/1.1\r\nHost: x"),
            Parsed::Partial
        ));
    }
}
