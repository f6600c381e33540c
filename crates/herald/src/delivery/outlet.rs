//! A stream's socket, shared by the task that serves it and the courier
//! that writes for it while it is idle (`courier.rs`).
//!
//! The task serving a socket (`server/sse_socket.rs`) writes the response
//! head, then polls the stream's writer for chunks and writes them. A
//! stream that has nothing queued parks its socket in its connection; the
//! next events queued for it are then written by the courier, in one
//! non-blocking `sendmsg` each time, without waking the stream's task. A
//! write the socket takes only in part (or not at all) leaves the rest here
//! ([`Outlet::take_leftover`]) and the stream leaves the courier's hands:
//! its task sends those bytes before anything else.
//!
//! Both write the same framing: each chunk of the body with its chunked
//! transfer coding (size line, data, CRLF), or bare when the response is
//! not chunked (HTTP/1.0).

use std::io::{self, IoSlice};

use bytes::{Bytes, BytesMut};
use herald_wire::chunked::{ChunkHead, CHUNK_END};
use parking_lot::Mutex;
use tokio::net::TcpStream;

use crate::values::event::SharedEvent;

/// Most bytes copied into one chunk (a single larger event goes alone,
/// uncopied).
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;

/// A socket that streams an SSE body.
pub(crate) struct Outlet {
    socket: TcpStream,
    chunked: bool,
    /// Bytes of a courier's write the socket did not take. Its task sends
    /// them before the next chunk; a stream does not park while some wait.
    leftover: Mutex<Option<Bytes>>,
}

/// How much of one write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    All,
    /// This many bytes, fewer than the whole (maybe none: the socket is full).
    Part(usize),
}

impl Outlet {
    pub(crate) fn new(socket: TcpStream, chunked: bool) -> Outlet {
        Outlet {
            socket,
            chunked,
            leftover: Mutex::new(None),
        }
    }

    pub(crate) fn socket(&self) -> &TcpStream {
        &self.socket
    }

    /// Whether body chunks go out with chunked framing.
    pub(crate) fn chunked(&self) -> bool {
        self.chunked
    }

    /// The courier's write of `data`, one body chunk, as much as the socket
    /// takes now, in one `sendmsg`; what it does not take (maybe all of it)
    /// is kept for the stream's task, which sends it before anything else.
    /// `true` when all of it went.
    ///
    /// Straight to the socket, past tokio's record of its readiness (a
    /// cache miss per write in a courier's round over thousands of
    /// sockets): a write that would block leaves that record as it was,
    /// and the task's next write, finding the socket full, corrects it.
    pub(crate) fn write_or_keep(&self, data: &[u8]) -> io::Result<bool> {
        let head = self.chunked.then(|| ChunkHead::new(data.len()));
        let parts = parts(None, head.as_ref(), data);
        let sent = socket2::SockRef::from(&self.socket).send_vectored(&parts.map(IoSlice::new));
        let sent = match written(sent, &parts)? {
            Written::All => return Ok(true),
            Written::Part(sent) => sent,
        };
        let rest = unsent(parts, sent).concat();
        *self.leftover.lock() = Some(Bytes::from(rest));
        Ok(false)
    }

    /// What a courier's write left unsent, taken.
    pub(crate) fn take_leftover(&self) -> Option<Bytes> {
        self.leftover.lock().take()
    }

    pub(crate) fn has_leftover(&self) -> bool {
        self.leftover.lock().is_some()
    }
}

/// The parts of one write: raw bytes a courier left unsent, the chunk's
/// size line (when chunked), the data (the hub's shared encoding, never
/// copied), and the CRLF after a chunk.
pub(crate) fn parts<'a>(
    before: Option<&'a [u8]>,
    head: Option<&'a ChunkHead>,
    data: &'a [u8],
) -> [&'a [u8]; 4] {
    let before = before.unwrap_or(&[]);
    match head {
        Some(head) => [before, head.as_bytes(), data, CHUNK_END],
        None => [before, data, &[], &[]],
    }
}

/// Writes what the socket takes now of `parts`, in one `writev`, without
/// waiting.
pub(crate) fn try_write_parts(socket: &TcpStream, parts: &[&[u8]; 4]) -> io::Result<Written> {
    written(socket.try_write_vectored(&parts.map(IoSlice::new)), parts)
}

/// How much of `parts` a non-blocking write that returned `sent` took.
fn written(sent: io::Result<usize>, parts: &[&[u8]; 4]) -> io::Result<Written> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    match sent {
        Ok(n) if n == total => Ok(Written::All),
        Ok(n) => Ok(Written::Part(n)),
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(Written::Part(0)),
        Err(err) => Err(err),
    }
}

/// What is left of `parts` once its first `sent` bytes went.
pub(crate) fn unsent(mut parts: [&[u8]; 4], sent: usize) -> [&[u8]; 4] {
    let mut skip = sent;
    for part in parts.iter_mut() {
        let take = skip.min(part.len());
        *part = &part[take..];
        skip -= take;
    }
    parts
}

/// Bytes gathered for one write: one part as it is (shared), more copied
/// together, up to [`CHUNK_BYTES`].
#[derive(Default)]
pub(crate) struct Chunk {
    one: Option<Bytes>,
    more: Option<BytesMut>,
}

impl Chunk {
    /// Adds `part` unless the chunk holds something and would pass the
    /// limit with it: then `false`, and `part` waits for the next chunk.
    pub(crate) fn add(&mut self, part: &Bytes) -> bool {
        let len = match (&self.one, &self.more) {
            (_, Some(buf)) => buf.len(),
            (Some(one), None) => one.len(),
            (None, None) => {
                self.one = Some(part.clone());
                return true;
            }
        };
        if len + part.len() > CHUNK_BYTES {
            return false;
        }
        let buf = self.more.get_or_insert_with(|| {
            let mut buf = BytesMut::with_capacity((len + part.len()).max(4096));
            buf.extend_from_slice(self.one.as_ref().expect("one part"));
            buf
        });
        buf.extend_from_slice(part);
        true
    }

    /// The chunk of the events at the front of `events` that are newer
    /// than `last_written` (and not in `skip`, sorted), up to
    /// [`CHUNK_BYTES`]; moves `last_written` past them. Returns it (`None`
    /// when none were left to write) and how many events it took, older
    /// ones included. Events come in ascending id order (fan-out offers in
    /// it, the log reads in it), so what was written already is a prefix.
    pub(crate) fn gather<'a>(
        events: impl IntoIterator<Item = &'a SharedEvent>,
        last_written: &mut u64,
        skip: &[u64],
    ) -> (Option<Bytes>, usize) {
        let mut chunk = Chunk::default();
        let mut taken = 0;
        for event in events {
            let id = event.id.0;
            if id > *last_written {
                let skipped = !skip.is_empty() && skip.binary_search(&id).is_ok();
                if !skipped && !chunk.add(&event.frame) {
                    break;
                }
                *last_written = id;
            }
            taken += 1;
        }
        (chunk.done(), taken)
    }

    pub(crate) fn done(self) -> Option<Bytes> {
        match self.more {
            Some(buf) => Some(buf.freeze()),
            None => self.one,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_share_one_part_and_copy_at_most_the_limit() {
        let small = Bytes::from(vec![b'a'; 1000]);
        let big = Bytes::from(vec![b'b'; CHUNK_BYTES + 1]);
        // One part goes as it is, whatever its size.
        let mut one = Chunk::default();
        assert!(one.add(&big));
        assert!(!one.add(&small), "nothing joins a full chunk");
        assert_eq!(one.done().unwrap().as_ptr(), big.as_ptr());
        // Small parts are copied together up to the limit.
        let mut many = Chunk::default();
        let mut taken = 0;
        while many.add(&small) {
            taken += 1;
        }
        assert_eq!(taken, CHUNK_BYTES / 1000);
        assert_eq!(many.done().unwrap().len(), taken * 1000);
        assert!(Chunk::default().done().is_none());
    }
}
