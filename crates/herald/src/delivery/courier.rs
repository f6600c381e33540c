//! The courier: one task that writes events into the sockets of idle
//! streams, so that a stream with nothing queued costs no wake-up and no
//! poll of its own task per delivery.
//!
//! A stream's writer that finds its queue empty parks its socket (an
//! [`Outlet`](crate::delivery::outlet::Outlet)) in its connection. Fan-out
//! queues an event as always; for a parked connection whose queue was
//! empty it hands the connection here instead of waking the stream's task
//! (one hand-over per committed batch, one wake-up of this task). The
//! courier then writes whatever each connection has queued by then, in
//! one non-blocking `writev` (`Connection::write_parked`): events that
//! pile up while it works go out together, as a woken task's would.
//!
//! Whatever is not plain gives the stream back to its own task, woken:
//! a socket that takes a write only in part or not at all (the task
//! sends the rest and waits for room, under `stream.write_timeout_secs`),
//! more than one chunk queued, a heartbeat due, the stream closing. The
//! writer takes the socket back under the queue's lock, so the two never
//! write into it at once and what the courier wrote is never written
//! again.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::delivery::connection::Connection;
use crate::hangup::Signal;
use std::time::Duration;

/// Connections written in one turn of the courier before it yields its
/// worker to other tasks.
const TURN: usize = 256;

/// Connections with events for their parked sockets, and the courier's
/// wake-up.
#[derive(Default)]
pub(crate) struct Courier {
    due: Mutex<Vec<Arc<Connection>>>,
    ready: Signal,
}

impl Courier {
    /// Hands over connections whose parked sockets have events queued.
    pub(crate) fn hand(&self, due: &mut Vec<Arc<Connection>>) {
        if due.is_empty() {
            return;
        }
        {
            let mut waiting = self.due.lock();
            if waiting.is_empty() {
                std::mem::swap(&mut *waiting, due);
            } else {
                waiting.append(due);
            }
        }
        self.ready.raise();
    }

    /// Writes for the connections handed over, as they come, until
    /// `stop` resolves; tells `wrote` each write's queue depth and the
    /// age of its oldest event.
    pub(crate) async fn run(
        &self,
        mut wrote: impl FnMut(usize, Duration),
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut work: Vec<Arc<Connection>> = Vec::new();
        loop {
            tokio::select! {
                biased;
                () = &mut stop => return,
                () = std::future::poll_fn(|cx| self.ready.poll_take(cx)) => {}
            }
            std::mem::swap(&mut work, &mut *self.due.lock());
            let mut done = 0;
            for conn in work.drain(..) {
                if let Some((depth, age)) = conn.write_parked() {
                    wrote(depth, age);
                }
                done += 1;
                if done % TURN == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}
