//! HTTP/1.1 chunked transfer coding (RFC 9112 §7.1): what the hub writes
//! around each SSE chunk, and a decoder that takes a body as it arrives,
//! split anywhere.

use crate::WireError;

/// What follows a chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";

/// The last chunk, which ends a body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Longest size line the decoder waits for (hex digits, extensions, CRLF).
const MAX_SIZE_LINE: usize = 1024;

/// The size line that opens a chunk of `len` bytes (`1a2\r\n`), built on
/// the stack: the hub writes one per delivery.
#[derive(Debug, Clone, Copy)]
pub struct ChunkHead {
    buf: [u8; 18],
    start: u8,
}

impl ChunkHead {
    /// The size line for `len` bytes of data.
    pub fn new(len: usize) -> ChunkHead {
        let mut buf = [0u8; 18];
        buf[16] = b'\r';
        buf[17] = b'\n';
        let mut at = 16;
        let mut n = len;
        loop {
            at -= 1;
            buf[at] = b"0123456789abcdef"[n & 0xf];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        ChunkHead {
            buf,
            start: at as u8,
        }
    }

    /// The line's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start as usize..]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Waiting for a size line.
    #[default]
    Size,
    /// Inside a chunk's data, this many bytes to go.
    Data(usize),
    /// After a chunk's data, waiting for its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines up to a blank one.
    Trailer,
    /// The body is whole.
    Ended,
}

/// Decodes a chunked body fed in pieces of any size.
#[derive(Debug, Clone, Default)]
pub struct ChunkedDecoder {
    state: State,
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> ChunkedDecoder {
        ChunkedDecoder::default()
    }

    /// Whether the last chunk (and the blank line after it) has come.
    pub fn ended(&self) -> bool {
        self.state == State::Ended
    }

    /// Decodes what it can of `raw`, appending the data to `out`. Returns
    /// how many bytes of `raw` it took; the rest (an incomplete size line
    /// or CRLF, or bytes after the body's end) is for the next call or the
    /// next response.
    pub fn decode(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        self.run(raw, Some(out))
    }

    /// Like [`decode`](Self::decode), dropping the data: to step over a
    /// body whose content does not matter.
    pub fn skip(&mut self, raw: &[u8]) -> Result<usize, WireError> {
        self.run(raw, None)
    }

    fn run(&mut self, raw: &[u8], mut out: Option<&mut Vec<u8>>) -> Result<usize, WireError> {
        let mut at = 0;
        loop {
            let rest = &raw[at..];
            match self.state {
                State::Ended => return Ok(at),
                State::Data(left) => {
                    let take = left.min(rest.len());
                    if take == 0 {
                        return Ok(at);
                    }
                    if let Some(out) = out.as_deref_mut() {
                        out.extend_from_slice(&rest[..take]);
                    }
                    at += take;
                    self.state = match left - take {
                        0 => State::DataEnd,
                        more => State::Data(more),
                    };
                }
                State::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(at);
                    }
                    if &rest[..2] != CHUNK_END {
                        return Err(WireError("a chunk's data is not followed by CRLF".into()));
                    }
                    at += 2;
                    self.state = State::Size;
                }
                State::Size | State::Trailer => {
                    let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") else {
                        if rest.len() > MAX_SIZE_LINE {
                            return Err(WireError("a chunk size line has no end".into()));
                        }
                        return Ok(at);
                    };
                    let line = &rest[..nl];
                    at += nl + 2;
                    if self.state == State::Trailer {
                        if line.is_empty() {
                            self.state = State::Ended;
                        }
                        continue;
                    }
                    self.state = match size(line)? {
                        0 => State::Trailer,
                        n => State::Data(n),
                    };
                }
            }
        }
    }
}

/// The size of a size line: hex digits, then maybe `;extensions`.
fn size(line: &[u8]) -> Result<usize, WireError> {
    let hex = line.split(|&b| b == b';').next().unwrap_or_default();
    let hex = hex.trim_ascii();
    if hex.is_empty() || hex.len() > 16 {
        return Err(WireError(format!(
            "bad chunk size line {:?}",
            String::from_utf8_lossy(line)
        )));
    }
    let mut n = 0usize;
    for &b in hex {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => {
                return Err(WireError(format!(
                    "bad chunk size line {:?}",
                    String::from_utf8_lossy(line)
                )))
            }
        };
        n = n << 4 | digit as usize;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A body as the hub writes it: a size line, the data, CRLF per chunk,
    /// then the last chunk.
    fn encode(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut wire = Vec::new();
        for c in chunks {
            wire.extend_from_slice(ChunkHead::new(c.len()).as_bytes());
            wire.extend_from_slice(c);
            wire.extend_from_slice(CHUNK_END);
        }
        wire.extend_from_slice(LAST_CHUNK);
        wire
    }

    #[test]
    fn size_lines() {
        assert_eq!(ChunkHead::new(0).as_bytes(), b"0\r\n");
        assert_eq!(ChunkHead::new(0x1a2).as_bytes(), b"1a2\r\n");
        assert_eq!(
            ChunkHead::new(usize::MAX).as_bytes(),
            b"ffffffffffffffff\r\n"
        );
    }

    #[test]
    fn extensions_trailers_and_what_follows() {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let wire = b"3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\nHTTP/1.1";
        let took = d.decode(wire, &mut out).unwrap();
        assert_eq!(out, b"abc");
        assert!(d.ended());
        assert_eq!(&wire[took..], b"HTTP/1.1");
    }

    #[test]
    fn bad_bytes_are_errors() {
        for wire in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"3\r\nabcXY",
            b"12345678901234567\r\n",
        ] {
            let mut d = ChunkedDecoder::new();
            assert!(d.skip(wire).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
        let endless = vec![b'1'; MAX_SIZE_LINE + 1];
        assert!(ChunkedDecoder::new().skip(&endless).is_err());
    }

    proptest! {
        /// Whatever the chunks and wherever the reads split them, the data
        /// comes out whole and the end is found exactly once.
        #[test]
        fn round_trips_split_anywhere(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..8),
            cuts in prop::collection::vec(1usize..40, 1..50),
        ) {
            let wire = encode(&chunks);
            let mut d = ChunkedDecoder::new();
            let mut out = Vec::new();
            let mut pending: Vec<u8> = Vec::new();
            let mut fed = 0;
            let mut cut = cuts.iter().cycle();
            while fed < wire.len() {
                let n = (*cut.next().unwrap()).min(wire.len() - fed);
                pending.extend_from_slice(&wire[fed..fed + n]);
                fed += n;
                let took = d.decode(&pending, &mut out).unwrap();
                pending.drain(..took);
            }
            prop_assert!(d.ended());
            prop_assert!(pending.is_empty());
            prop_assert_eq!(out, chunks.concat());
        }
    }
}
