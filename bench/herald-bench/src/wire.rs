//! Raw HTTP/1.1 on tokio sockets: just enough to subscribe to an SSE stream
//! and to publish, with no HTTP library between the generator and the wire.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{anyhow, bail, Context};
use herald_wire::chunked::ChunkedDecoder;
use herald_wire::head::{Framing, ResponseHead};
use herald_wire::sse::{self, Line};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// `http://HOST:PORT/PATH?QUERY` with `{topic}` somewhere in it.
#[derive(Debug, Clone)]
pub struct UrlTemplate {
    pub addr: SocketAddr,
    pub host: String,
    path: String,
}

impl UrlTemplate {
    pub fn parse(url: &str) -> anyhow::Result<UrlTemplate> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("{url}: only http:// URLs"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddr = host
            .parse()
            .with_context(|| format!("{url}: the host must be IP:PORT"))?;
        Ok(UrlTemplate {
            addr,
            host: host.to_owned(),
            path: path.to_owned(),
        })
    }

    /// The path and query for one topic.
    pub fn path(&self, topic: &str) -> String {
        self.path.replace("{topic}", topic)
    }
}

/// Loopback source addresses 127.0.0.1 … 127.0.0.N, so that more than one
/// address's worth of ephemeral ports (about 28k) can connect.
pub fn source_ip(i: usize, sources: usize) -> IpAddr {
    let n = (i % sources.max(1)) as u32 + 1;
    IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + n))
}

pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// What an SSE reader saw of one event's first `data:` line.
pub trait OnEvent {
    fn event(&mut self, id: Option<&[u8]>, first_data_line: &[u8]);
}

/// An SSE stream read incrementally: herald-wire's chunked decoder and line
/// splitter, keeping only what the generator measures (the id and the
/// first `data:` line of each event).
pub struct SseReader {
    /// `None`: the body is not chunked.
    chunked: Option<ChunkedDecoder>,
    /// Raw bytes not yet decoded.
    raw: Vec<u8>,
    /// Decoded body bytes not yet parsed into lines.
    body: Vec<u8>,
    id: Vec<u8>,
    has_id: bool,
    data: Vec<u8>,
    has_data: bool,
    /// The whole body ended (last chunk).
    pub ended: bool,
    /// Body bytes came with the head and wait to be parsed.
    primed: bool,
}

impl SseReader {
    /// Sends the request, reads the response head; `Err` unless 200.
    pub async fn open(
        stream: &mut TcpStream,
        host: &str,
        path: &str,
        headers: &[String],
    ) -> anyhow::Result<SseReader> {
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n"
        );
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await?;
        let (head, rest) = read_head(stream).await?;
        if head.status != 200 {
            bail!("subscribe answered {}", head.status);
        }
        let chunked = (head.framing()? == Framing::Chunked).then(ChunkedDecoder::new);
        Ok(SseReader::new(chunked, rest))
    }

    fn new(chunked: Option<ChunkedDecoder>, raw: Vec<u8>) -> SseReader {
        SseReader {
            chunked,
            primed: !raw.is_empty(),
            raw,
            body: Vec::new(),
            id: Vec::new(),
            has_id: false,
            data: Vec::new(),
            has_data: false,
            ended: false,
        }
    }

    /// Reads once from the socket and parses what came; false at EOF.
    pub async fn read(
        &mut self,
        stream: &mut TcpStream,
        on: &mut impl OnEvent,
    ) -> anyhow::Result<bool> {
        if self.primed {
            // What came with the response head is parsed first.
            self.primed = false;
        } else {
            self.raw.reserve(16 * 1024);
            if stream.read_buf(&mut self.raw).await? == 0 {
                return Ok(false);
            }
        }
        self.decode()?;
        self.parse(on);
        Ok(!self.ended)
    }

    fn decode(&mut self) -> anyhow::Result<()> {
        let Some(chunked) = self.chunked.as_mut() else {
            self.body.append(&mut self.raw);
            return Ok(());
        };
        let took = chunked.decode(&self.raw, &mut self.body)?;
        self.raw.drain(..took);
        self.ended = chunked.ended();
        Ok(())
    }

    fn parse(&mut self, on: &mut impl OnEvent) {
        let mut start = 0;
        while let Some((line, took)) = sse::next_line(&self.body[start..]) {
            start += took;
            match line {
                Line::Blank => {
                    if self.has_data {
                        let id = self.has_id.then_some(&self.id[..]);
                        on.event(id, &self.data);
                    }
                    self.has_data = false;
                    self.data.clear();
                }
                Line::Field {
                    name: b"data",
                    value,
                } if !self.has_data => {
                    self.data.extend_from_slice(value);
                    self.has_data = true;
                }
                Line::Field { name: b"id", value } => {
                    self.id.clear();
                    self.id.extend_from_slice(value);
                    self.has_id = true;
                }
                _ => {}
            }
        }
        self.body.drain(..start);
    }
}

/// Reads up to the end of a response head; returns it and what followed.
pub async fn read_head(stream: &mut TcpStream) -> anyhow::Result<(ResponseHead, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some((head, len)) = ResponseHead::parse(&buf)? {
            return Ok((head, buf[len..].to_vec()));
        }
        buf.reserve(4096);
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("connection closed before a response");
        }
    }
}

/// Reads pipelined HTTP responses off one connection, in order.
pub struct ResponseReader {
    buf: Vec<u8>,
}

impl Default for ResponseReader {
    fn default() -> Self {
        ResponseReader {
            buf: Vec::with_capacity(16 * 1024),
        }
    }
}

impl ResponseReader {
    /// The status of the next whole response (its body is skipped).
    pub async fn next<R: AsyncReadExt + Unpin>(&mut self, stream: &mut R) -> anyhow::Result<u16> {
        loop {
            if let Some(status) = self.take_one()? {
                return Ok(status);
            }
            self.buf.reserve(16 * 1024);
            if stream.read_buf(&mut self.buf).await? == 0 {
                bail!("publish connection closed");
            }
        }
    }

    fn take_one(&mut self) -> anyhow::Result<Option<u16>> {
        let Some((head, body_start)) = ResponseHead::parse(&self.buf)? else {
            return Ok(None);
        };
        let end = match head.framing()? {
            Framing::Length(len) if self.buf.len() >= body_start + len => body_start + len,
            Framing::Length(_) => return Ok(None),
            Framing::Chunked => {
                // The response is whole once the decoder has seen its end.
                let mut chunks = ChunkedDecoder::new();
                let took = chunks.skip(&self.buf[body_start..])?;
                if !chunks.ended() {
                    return Ok(None);
                }
                body_start + took
            }
            Framing::UntilClose => bail!("a publish answer without a length cannot be pipelined"),
        };
        self.buf.drain(..end);
        Ok(Some(head.status))
    }
}

/// How an event is posted to the publish URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PublishFormat {
    /// The body is the event's data (Herald's `?topic=` shortcut, nchan,
    /// the peers' `/pub/TOPIC`).
    #[default]
    Raw,
    /// Pushpin's HTTP publish API: JSON items whose `http-stream` content
    /// is a whole SSE event.
    PushpinJson,
}

/// Appends the POST that publishes `data` on `topic` to `out`.
pub fn publish_request(
    url: &UrlTemplate,
    format: PublishFormat,
    topic: &str,
    data: &[u8],
    out: &mut Vec<u8>,
) {
    let path = url.path(topic);
    match format {
        PublishFormat::Raw => post_request(&url.host, &path, "text/plain", data, out),
        PublishFormat::PushpinJson => {
            let content = format!("data: {}\n\n", String::from_utf8_lossy(data));
            let body = serde_json::json!({"items": [{"channel": topic,
                "formats": {"http-stream": {"content": content}}}]});
            post_request(
                &url.host,
                &path,
                "application/json",
                body.to_string().as_bytes(),
                out,
            );
        }
    }
}

/// One POST request with a body.
pub fn post_request(host: &str, path: &str, content_type: &str, body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Vec<(Option<String>, String)>);

    impl OnEvent for Collect {
        fn event(&mut self, id: Option<&[u8]>, data: &[u8]) {
            self.0.push((
                id.map(|i| String::from_utf8_lossy(i).into_owned()),
                String::from_utf8_lossy(data).into_owned(),
            ));
        }
    }

    fn reader(chunked: bool) -> SseReader {
        SseReader::new(chunked.then(ChunkedDecoder::new), Vec::new())
    }

    #[test]
    fn parses_events_across_chunk_and_read_boundaries() {
        let body = b"retry: 10\n\n: ping\n\nid: 7\nevent: x\ndata: 1 2 3\ndata: more\n\nid:8\r\ndata:4 5 6\r\n\r\n";
        // Chunked in pieces of 5 bytes, fed 3 bytes at a time.
        let mut wire = Vec::new();
        for piece in body.chunks(5) {
            wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            wire.extend_from_slice(piece);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let mut r = reader(true);
        let mut seen = Collect(Vec::new());
        for bytes in wire.chunks(3) {
            r.raw.extend_from_slice(bytes);
            r.decode().unwrap();
            r.parse(&mut seen);
        }
        assert!(r.ended);
        assert_eq!(
            seen.0,
            [
                (Some("7".into()), "1 2 3".into()),
                (Some("8".into()), "4 5 6".into())
            ]
        );
    }

    #[test]
    fn pipelined_responses_of_every_framing() {
        let mut r = ResponseReader::default();
        r.buf.extend_from_slice(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.1 204 No\r\n\r\n",
        );
        assert_eq!(r.take_one().unwrap(), Some(200));
        assert_eq!(r.take_one().unwrap(), Some(503));
        assert_eq!(r.take_one().unwrap(), Some(204));
        assert_eq!(r.take_one().unwrap(), None);
    }

    #[test]
    fn templates_and_sources() {
        let t = UrlTemplate::parse("http://127.0.0.1:8101/sub/{topic}?x=1").unwrap();
        assert_eq!(t.path("t7"), "/sub/t7?x=1");
        assert_eq!(t.addr.port(), 8101);
        assert_eq!(source_ip(0, 3).to_string(), "127.0.0.1");
        assert_eq!(source_ip(4, 3).to_string(), "127.0.0.2");
    }
}
