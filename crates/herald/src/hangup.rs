//! A switch the hub throws to drop a client's socket.
//!
//! The server puts one in each request it routes (for HTTP/2, one for the
//! whole connection) and watches it while it serves the socket; a stream's
//! connection keeps a clone and throws it when it must end at once (its
//! queue overflowed under `disconnect`): a reader that stopped reading
//! blocks every write, so the stream itself would never get to end.
//!
//! A flag and one waker, not a `CancellationToken`: an idle stream keeps
//! one for its whole life, and the token (a tree node, 120 bytes) and its
//! waiter (a `Notified` inside the stream's task) cost a subscriber more
//! than the rest of its socket state. One task watches a switch at a
//! time: the one serving its socket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

/// Drops the client's connection when thrown; clones share one switch.
#[derive(Clone, Default)]
pub struct Hangup(Arc<Switch>);

#[derive(Default)]
struct Switch {
    thrown: AtomicBool,
    watcher: AtomicWaker,
}

impl Hangup {
    /// A switch not yet thrown.
    pub fn new() -> Hangup {
        Hangup::default()
    }

    /// Throws the switch: the task serving the socket drops it.
    pub fn hang_up(&self) {
        self.0.thrown.store(true, Ordering::Release);
        self.0.watcher.wake();
    }

    /// Whether the switch was thrown.
    pub fn is_hung_up(&self) -> bool {
        self.0.thrown.load(Ordering::Acquire)
    }

    /// `Ready` once thrown; else `Pending`, and `cx` is woken when it is.
    /// Each poll replaces the waker of the one before: one task watches.
    pub fn poll_hung_up(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_hung_up() {
            return Poll::Ready(());
        }
        self.0.watcher.register(cx.waker());
        // Thrown between the look and the registration: it found no waker.
        if self.is_hung_up() {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Resolves once the switch is thrown.
    pub async fn hung_up(&self) {
        std::future::poll_fn(|cx| self.poll_hung_up(cx)).await
    }
}

impl std::fmt::Debug for Hangup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Hangup").field(&self.is_hung_up()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_throw_wakes_the_watcher_whenever_it_comes() {
        // Thrown before anyone watches: seen at once.
        let early = Hangup::new();
        early.clone().hang_up();
        early.hung_up().await;
        // Thrown while a task waits: that task wakes.
        let late = Hangup::new();
        let watched = tokio::spawn({
            let late = late.clone();
            async move { late.hung_up().await }
        });
        tokio::task::yield_now().await;
        assert!(!watched.is_finished() && !late.is_hung_up());
        late.hang_up();
        tokio::time::timeout(std::time::Duration::from_secs(5), watched)
            .await
            .expect("the watcher wakes")
            .unwrap();
    }
}
