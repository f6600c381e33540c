//! Serving the hub over TCP, and shutting down gracefully.
//!
//! Herald runs its own accept loop rather than `axum::serve` to control
//! what a long-lived SSE connection costs and how it ends: `TCP_NODELAY`
//! (small events go out at once), a header read timeout (no slow-loris), a
//! bound on request heads, the client's address for per-address limits,
//! and a shutdown that ends streams (the hub tells them to) before it waits
//! for connections — bounded by `shutdown_timeout_secs`. Subscribe requests
//! are served on the socket by [`sse_socket`], which holds a fraction of
//! hyper's per-connection buffers, and publishers' connections by
//! [`publish_socket`], which answers a publish for a fraction of hyper's and
//! the router's CPU; every other request goes to hyper.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::hub::Hub;

mod publish_socket;
mod sse_socket;
#[cfg(feature = "fuzzing")]
pub(crate) use publish_socket::fuzz_head as fuzz_publish_head;
#[cfg(feature = "fuzzing")]
pub(crate) use sse_socket::fuzz_head;

/// Largest request head (request line and headers). A subscribe may carry
/// `limits.max_topics_per_connection` patterns of up to 256 bytes and a
/// token in its query, so this is well above that; a larger head gets
/// `431`. Heads are read into buffers that grow only as far as the head
/// needs, so the bound costs idle streams nothing.
const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;
/// How long a new socket has to send its whole request head (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Sockets that have not finished their first request head, at most. A new
/// socket past it evicts the one waiting longest: a flood of sockets that
/// send nothing (slowloris) cannot keep a real client, who sends its head
/// at once, from being served. Each costs a task and a head buffer, for at
/// most [`HEADER_READ_TIMEOUT`].
pub(crate) const MAX_PENDING_HEADS: usize = 4096;

/// The sockets that have not sent a whole request head yet, oldest first.
#[derive(Clone, Default)]
struct PendingHeads(std::sync::Arc<std::sync::Mutex<PendingInner>>);

#[derive(Default)]
struct PendingInner {
    next: u64,
    /// Ids in arrival order; ids no longer in `live` are skipped.
    order: std::collections::VecDeque<u64>,
    live: std::collections::HashMap<u64, CancellationToken>,
}

/// One socket's place among [`PendingHeads`], given back on drop; its
/// token is cancelled if a newer socket evicts it first.
pub(crate) struct PendingHead {
    id: u64,
    heads: PendingHeads,
}

impl PendingHeads {
    fn lock(&self) -> std::sync::MutexGuard<'_, PendingInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new socket, evicting the oldest past the cap.
    fn join(&self) -> (PendingHead, CancellationToken) {
        let mut inner = self.lock();
        while inner.live.len() >= MAX_PENDING_HEADS {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(token) = inner.live.remove(&oldest) {
                token.cancel();
            }
        }
        if inner.order.len() > 2 * MAX_PENDING_HEADS {
            let PendingInner { order, live, .. } = &mut *inner;
            order.retain(|id| live.contains_key(id));
        }
        let id = inner.next;
        inner.next += 1;
        let token = CancellationToken::new();
        inner.order.push_back(id);
        inner.live.insert(id, token.clone());
        drop(inner);
        (
            PendingHead {
                id,
                heads: self.clone(),
            },
            token,
        )
    }
}

impl Drop for PendingHead {
    fn drop(&mut self) {
        self.heads.lock().live.remove(&self.id);
    }
}

/// Connections the kernel queues before `accept` takes them.
const LISTEN_BACKLOG: u32 = 8192;

/// The hub on a TCP socket: HTTP/1.1 and HTTP/2, with the SSE fast path
/// and a graceful shutdown (what `herald serve` runs).
pub struct Server {
    listener: TcpListener,
    hub: Hub,
}

impl Server {
    /// Binds `listen` from the hub's configuration.
    pub async fn bind(hub: Hub) -> io::Result<Server> {
        let addr = hub.config().listen;
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        let send_buffer = hub.config().stream.send_buffer_bytes;
        if send_buffer > 0 {
            // Autotuned, a socket whose reader stalls holds up to 4 MiB of
            // kernel memory: a thousand of them put the whole machine's TCP
            // under memory pressure. Accepted sockets inherit the size.
            socket.set_send_buffer_size(send_buffer.try_into().unwrap_or(u32::MAX))?;
        }
        socket.bind(addr)?;
        // A deep accept queue (the kernel caps it at `net.core.somaxconn`):
        // a burst of connects waits for `accept` instead of having its SYNs
        // dropped and retried a second later.
        let listener = socket.listen(LISTEN_BACKLOG)?;
        Ok(Server { listener, hub })
    }

    /// The address it listens on (the port, when `listen` asked for 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `signal` resolves, then shuts down gracefully.
    pub async fn run(self, signal: impl Future<Output = ()>) -> io::Result<()> {
        let Server { listener, hub } = self;
        let router = crate::http::router(hub.clone());
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_REQUEST_HEAD_BYTES);
        let builder = std::sync::Arc::new(builder);
        let write_timeout = match hub.config().stream.write_timeout_secs {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        };
        let graceful = GracefulShutdown::new();
        let lean = tokio_util::task::TaskTracker::new();
        let pending_heads = PendingHeads::default();
        let sockets = std::sync::Arc::new(Sockets {
            hub: hub.clone(),
            router,
            builder,
            write_timeout,
            lean: lean.clone(),
            openings: sse_socket::Openings::default(),
        });
        tokio::pin!(signal);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, addr) = match accepted {
                        Ok(pair) => pair,
                        Err(err) => {
                            // Out of file descriptors or similar: back off a
                            // little instead of spinning.
                            tracing::warn!(%err, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let (pending, evicted) = pending_heads.join();
                    let _ = stream.set_nodelay(true);
                    let served = sockets.clone().serve(stream, addr, pending, graceful.watcher());
                    tokio::spawn(async move {
                        // Evicted while still waiting for its head: a newer
                        // socket took its place (see `MAX_PENDING_HEADS`).
                        tokio::select! {
                            () = served => {}
                            () = evicted.cancelled() => {
                                tracing::debug!(%addr, "no request yet and the oldest of too many such sockets; closed");
                            }
                        }
                    });
                }
                () = &mut signal => break,
            }
        }
        drop(listener);
        let open = hub.open_streams();
        tracing::info!(
            open_streams = open,
            "shutting down: telling subscribers to reconnect"
        );
        hub.shutdown();
        let limit = hub.config().shutdown_timeout();
        lean.close();
        let closed = async {
            tokio::join!(graceful.shutdown(), lean.wait());
        };
        match tokio::time::timeout(limit, closed).await {
            Ok(()) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!(
                remaining_streams = hub.open_streams(),
                "shutdown timeout reached; closing remaining connections"
            ),
        }
        // The streams are gone: their presence leaves and delivery reports
        // are written last, then the timers stop.
        if tokio::time::timeout(Duration::from_secs(5), hub.stop_background())
            .await
            .is_err()
        {
            tracing::warn!("background work did not stop within 5 s; leaving it");
        }
        Ok(())
    }
}

/// What a connection's first request is, as far as the accept loop needs
/// to know.
enum First {
    /// `GET /v1/events`: served by `sse_socket`.
    Subscribe,
    /// `POST /v1/publish`: served by `publish_socket`.
    Publish,
    /// Anything else, or a client that has not yet sent that much: hyper.
    Other,
}

/// Looks at the first bytes waiting on `stream`, without consuming them.
async fn first_request(stream: &tokio::net::TcpStream) -> First {
    let mut first = [0u8; publish_socket::PREFIX.len() + 1];
    let n = stream.peek(&mut first).await.unwrap_or(0);
    // A path's prefix, then its query or the end of the path.
    let starts = |prefix: &[u8]| {
        first[..n].starts_with(prefix) && matches!(first[..n].get(prefix.len()), Some(b'?' | b' '))
    };
    if starts(sse_socket::PREFIX) {
        First::Subscribe
    } else if starts(publish_socket::PREFIX) {
        First::Publish
    } else {
        First::Other
    }
}

/// What every accepted socket is served with.
struct Sockets {
    hub: Hub,
    router: axum::Router,
    builder: std::sync::Arc<auto::Builder<TokioExecutor>>,
    write_timeout: Option<Duration>,
    /// The connections served beside hyper, waited for at shutdown.
    lean: tokio_util::task::TaskTracker,
    openings: sse_socket::Openings,
}

impl Sockets {
    /// Serves one accepted socket: a subscribe or a publisher's
    /// connection on the lean paths (`sse_socket`, `publish_socket`),
    /// anything else, and whatever those hand back, on hyper.
    async fn serve(
        self: std::sync::Arc<Self>,
        stream: tokio::net::TcpStream,
        addr: SocketAddr,
        pending: PendingHead,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let accepted = tokio::time::Instant::now();
        let first = tokio::time::timeout(HEADER_READ_TIMEOUT, first_request(&stream));
        let Ok(first) = first.await else {
            tracing::debug!(%addr, "no request within the header timeout");
            return;
        };
        // Lets the hub drop this socket when it closes a stream whose
        // writes are blocked (see `Connection`).
        let kill = crate::Hangup::new();
        let (io, pending) = match first {
            First::Subscribe => {
                let bounds = sse_socket::Bounds {
                    max_head: MAX_REQUEST_HEAD_BYTES,
                    // One deadline for the whole head.
                    head_timeout: HEADER_READ_TIMEOUT.saturating_sub(accepted.elapsed()),
                    write_timeout: self.write_timeout,
                    openings: self.openings.clone(),
                };
                let opening = self.lean.track_future(sse_socket::open(
                    stream,
                    addr,
                    self.router.clone(),
                    kill.clone(),
                    bounds,
                    pending,
                ));
                let opened = tokio::select! {
                    opened = opening => opened,
                    () = kill.hung_up() => {
                        tracing::debug!(%addr, "connection dropped by the hub");
                        return;
                    }
                };
                match opened {
                    // The body goes on in a task of its own, holding only
                    // what streaming needs (this task's state is mostly for
                    // the accept and the head); the tracker sees no gap.
                    Ok(Some(streaming)) => {
                        tokio::spawn(self.lean.track_future(streaming));
                    }
                    Ok(None) => {}
                    Err(err) => tracing::debug!(%addr, %err, "stream ended with an error"),
                }
                return;
            }
            First::Publish => {
                let bounds = publish_socket::Bounds {
                    max_head: MAX_REQUEST_HEAD_BYTES,
                    first_head_by: accepted + HEADER_READ_TIMEOUT,
                    head_timeout: HEADER_READ_TIMEOUT,
                };
                let serving =
                    publish_socket::serve(stream, addr, self.hub.clone(), bounds, pending);
                match self.lean.track_future(Box::pin(serving)).await {
                    // A request the lean path does not take: hyper serves
                    // the rest of the connection.
                    Ok(Some(handover)) => (handover, None),
                    Ok(None) => return,
                    Err(err) => {
                        tracing::debug!(%addr, %err, "publisher's connection ended with an error");
                        return;
                    }
                }
            }
            First::Other => (publish_socket::Handover::fresh(stream), Some(pending)),
        };
        // Given back when hyper hands over the first request.
        let pending = std::sync::Arc::new(std::sync::Mutex::new(pending));
        let handle = kill.clone();
        let service = self
            .router
            .clone()
            .map_request(move |mut req: Request<Incoming>| {
                pending.lock().unwrap_or_else(|e| e.into_inner()).take();
                req.extensions_mut().insert(ConnectInfo(addr));
                req.extensions_mut().insert(handle.clone());
                req
            });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service))
            .into_owned();
        // Boxed: hyper's connection is large, and the task is as large as
        // its largest branch; a subscriber's task (the branch above) stays
        // small.
        let conn = Box::pin(watcher.watch(conn));
        tokio::select! {
            result = conn => if let Err(err) = result {
                tracing::debug!(%addr, %err, "connection ended with an error");
            },
            () = kill.hung_up() => {
                tracing::debug!(%addr, "connection dropped by the hub");
            }
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_socket_past_the_cap_evicts_the_oldest_waiting() {
        let heads = PendingHeads::default();
        let (first, first_token) = heads.join();
        let (done, done_token) = heads.join();
        drop(done); // sent its head: no longer waiting, never evicted
        let mut rest: Vec<_> = (2..MAX_PENDING_HEADS).map(|_| heads.join()).collect();
        assert!(!first_token.is_cancelled());
        let (_newest, newest_token) = heads.join();
        assert!(!newest_token.is_cancelled());
        // One place was free (the finished one); the next takes the oldest.
        assert!(!first_token.is_cancelled());
        let (_another, _) = heads.join();
        assert!(first_token.is_cancelled(), "the oldest waiting is evicted");
        assert!(!done_token.is_cancelled());
        assert!(!rest[0].1.is_cancelled());
        assert_eq!(heads.lock().live.len(), MAX_PENDING_HEADS);
        drop(first);
        rest.clear();
        assert_eq!(heads.lock().live.len(), 2);
    }
}
