//! HTTP/1.1 and Server-Sent Events on the wire, as bytes, without I/O.
//!
//! Three programs read or write the same bytes: the hub's subscribe fast
//! path (`herald`'s `server/sse_socket.rs`) writes chunked SSE, and the
//! end-to-end tests' client and `herald-bench` read it back. Each had its
//! own chunked decoder and SSE line splitter; this crate is the one they
//! share, tested once here:
//!
//! - [`chunked`]: the size line that opens a chunk, and an incremental
//!   decoder of a chunked body;
//! - [`head`]: a response's status line and headers;
//! - [`sse`]: an SSE body split into lines and fields.
//!
//! Nothing here reads a socket: callers feed bytes as they arrive, so the
//! same code serves a tokio test client and a load generator holding
//! thousands of streams.

#![warn(missing_docs, unreachable_pub)]

pub mod chunked;
pub mod head;
pub mod sse;

/// Bytes that break the protocol: the reader cannot go on with this
/// connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}
