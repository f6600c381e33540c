//! A response's head: status line and headers, up to the blank line.

use crate::WireError;

/// Most bytes a response head may take before the reader gives up.
pub const MAX_HEAD: usize = 64 * 1024;

/// Most headers a response head may have.
const MAX_HEADERS: usize = 64;

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// The headers in order, names as sent.
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// Parses the head at the start of `buf`: `None` until its blank line
    /// has come, else the head and how many bytes it took (the body starts
    /// there).
    pub fn parse(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, WireError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let head = ResponseHead {
                    status: response.code.unwrap_or(0),
                    headers: response
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).trim().to_owned(),
                            )
                        })
                        .collect(),
                };
                Ok(Some((head, len)))
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(WireError(format!(
                "a response head of more than {MAX_HEAD} bytes"
            ))),
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(WireError(format!("not an HTTP/1.1 response head: {e}"))),
        }
    }

    /// The first header of this name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How the body is framed.
    pub fn framing(&self) -> Result<Framing, WireError> {
        if self.header("transfer-encoding").is_some_and(|v| {
            v.split(',')
                .any(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
        }) {
            return Ok(Framing::Chunked);
        }
        match self.header("content-length") {
            Some(len) => len
                .parse()
                .map(Framing::Length)
                .map_err(|_| WireError(format!("bad Content-Length {len:?}"))),
            None if self.status == 204 || self.status == 304 || self.status < 200 => {
                Ok(Framing::Length(0))
            }
            None => Ok(Framing::UntilClose),
        }
    }
}

/// Where a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Chunked: at the last chunk (see [`crate::chunked`]).
    Chunked,
    /// After this many bytes.
    Length(usize),
    /// When the server closes the connection.
    UntilClose,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_the_blank_line_then_parses() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n";
        assert_eq!(ResponseHead::parse(&wire[..30]).unwrap(), None);
        let (head, len) = ResponseHead::parse(wire).unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.header("content-type"), Some("text/event-stream"));
        assert_eq!(head.framing().unwrap(), Framing::Chunked);
        assert_eq!(&wire[len..], b"5\r\n");
    }

    #[test]
    fn framings() {
        let head = |text: &str| ResponseHead::parse(text.as_bytes()).unwrap().unwrap().0;
        assert_eq!(
            head("HTTP/1.1 503 X\r\ncontent-length: 12\r\n\r\n").framing(),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            head("HTTP/1.1 204 No Content\r\n\r\n").framing(),
            Ok(Framing::Length(0))
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\n\r\n").framing(),
            Ok(Framing::UntilClose)
        );
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n")
            .framing()
            .is_err());
    }

    #[test]
    fn refuses_what_is_not_a_response() {
        assert!(ResponseHead::parse(b"GET / HTTP/1.1\r\n\r\n").is_err());
        let endless = [b"HTTP/1.1 200 OK\r\n".as_slice(), &vec![b'x'; MAX_HEAD]].concat();
        assert!(ResponseHead::parse(&endless).is_err());
    }
}
