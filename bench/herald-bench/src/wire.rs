//! Raw HTTP/1.1 on tokio sockets: just enough to subscribe to an SSE stream
//! and to publish, with no HTTP library between the generator and the wire.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{anyhow, bail, Context};
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

/// Incremental SSE parser behind an incremental chunked decoder.
pub struct SseReader {
    chunked: bool,
    /// Bytes of the current chunk still to come (chunked only).
    chunk_left: usize,
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
        let status = status_of(&head)?;
        if status != 200 {
            bail!("subscribe answered {status}");
        }
        let chunked =
            header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        Ok(SseReader {
            chunked,
            chunk_left: 0,
            primed: !rest.is_empty(),
            raw: rest,
            body: Vec::new(),
            id: Vec::new(),
            has_id: false,
            data: Vec::new(),
            has_data: false,
            ended: false,
        })
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
        self.decode();
        self.parse(on);
        Ok(!self.ended)
    }

    fn decode(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        let mut at = 0;
        loop {
            if self.chunk_left > 0 {
                let take = self.chunk_left.min(self.raw.len() - at);
                if take == 0 {
                    break;
                }
                self.body.extend_from_slice(&self.raw[at..at + take]);
                at += take;
                self.chunk_left -= take;
                if self.chunk_left > 0 {
                    break;
                }
                continue;
            }
            // A size line, after the CRLF ending the previous chunk.
            let rest = &self.raw[at..];
            let skip = if rest.starts_with(b"\r\n") { 2 } else { 0 };
            let Some(nl) = rest[skip..].windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let line = &rest[skip..skip + nl];
            let hex = line.split(|&b| b == b';').next().unwrap_or(b"");
            let size = std::str::from_utf8(hex)
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .unwrap_or(0);
            at += skip + nl + 2;
            if size == 0 {
                self.ended = true;
                break;
            }
            self.chunk_left = size;
        }
        self.raw.drain(..at);
    }

    fn parse(&mut self, on: &mut impl OnEvent) {
        let mut start = 0;
        while let Some(nl) = self.body[start..].iter().position(|&b| b == b'\n') {
            let mut line = &self.body[start..start + nl];
            start += nl + 1;
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            if line.is_empty() {
                if self.has_data {
                    let id = self.has_id.then_some(&self.id[..]);
                    on.event(id, &self.data);
                }
                self.has_data = false;
                self.data.clear();
                continue;
            }
            if line[0] == b':' {
                continue;
            }
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"data" if !self.has_data => {
                    self.data.extend_from_slice(value);
                    self.has_data = true;
                }
                b"data" => {}
                b"id" => {
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
pub async fn read_head(stream: &mut TcpStream) -> anyhow::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Ok((head, buf[end + 4..].to_vec()));
        }
        if buf.len() > 64 * 1024 {
            bail!("response head over 64 KiB");
        }
        buf.reserve(4096);
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("connection closed before a response");
        }
    }
}

pub fn status_of(head: &str) -> anyhow::Result<u16> {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response: {head:?}"))
}

pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
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
        let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let status = status_of(&head)?;
        let body_start = end + 4;
        if let Some(len) = header(&head, "content-length") {
            let len: usize = len.parse()?;
            if self.buf.len() < body_start + len {
                return Ok(None);
            }
            self.buf.drain(..body_start + len);
            return Ok(Some(status));
        }
        if header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            // Walk the chunks; the response is whole at the zero chunk.
            let mut at = body_start;
            loop {
                let Some(nl) = self.buf[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                let line = std::str::from_utf8(&self.buf[at..at + nl])?;
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)?;
                at += nl + 2;
                if self.buf.len() < at + size + 2 {
                    return Ok(None);
                }
                at += size + 2;
                if size == 0 {
                    self.buf.drain(..at);
                    return Ok(Some(status));
                }
            }
        }
        // No body (204, or a 1xx).
        self.buf.drain(..body_start);
        Ok(Some(status))
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
        SseReader {
            chunked,
            chunk_left: 0,
            primed: false,
            raw: Vec::new(),
            body: Vec::new(),
            id: Vec::new(),
            has_id: false,
            data: Vec::new(),
            has_data: false,
            ended: false,
        }
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
            r.decode();
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
