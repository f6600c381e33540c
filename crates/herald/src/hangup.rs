//! A switch the hub throws to drop a client's socket, and the flag with
//! a waker it is made of ([`Signal`], also a connection's wake-up).
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

/// A flag and the waker of the one task that waits for it: what a
/// stream waits on instead of a future of its own.
#[derive(Default)]
pub(crate) struct Signal {
    raised: AtomicBool,
    waiter: AtomicWaker,
}

impl Signal {
    /// Raises the flag and wakes the waiting task, if any.
    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waiter.wake();
    }

    pub(crate) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// `Ready` once raised, and it stays raised (a switch).
    pub(crate) fn poll_raised(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_with(cx, || self.is_raised())
    }

    /// `Ready` once raised, and lowered again (a wake-up: one raised while
    /// the task is busy is kept for its next wait, not lost).
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_with(cx, || self.raised.swap(false, Ordering::Acquire))
    }

    /// Each poll replaces the waker of the one before: one task waits.
    fn poll_with(&self, cx: &mut Context<'_>, seen: impl Fn() -> bool) -> Poll<()> {
        if seen() {
            return Poll::Ready(());
        }
        self.waiter.register(cx.waker());
        // Raised between the look and the registration: it found no waker.
        if seen() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Drops the client's connection when thrown; clones share one switch.
#[derive(Clone, Default)]
pub struct Hangup(Arc<Signal>);

impl Hangup {
    /// A switch not yet thrown.
    pub fn new() -> Hangup {
        Hangup::default()
    }

    /// Throws the switch: the task serving the socket drops it.
    pub fn hang_up(&self) {
        self.0.raise();
    }

    /// Whether the switch was thrown.
    pub fn is_hung_up(&self) -> bool {
        self.0.is_raised()
    }

    /// `Ready` once thrown; else `Pending`, and `cx` is woken when it is.
    /// Each poll replaces the waker of the one before: one task watches.
    pub fn poll_hung_up(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll_raised(cx)
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
