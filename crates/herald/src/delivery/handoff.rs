//! What fan-out hands to the hub's background tasks.
//!
//! Fan-out hands these over under its registry lock, so a hand-over never
//! blocks and never waits for the task; and the task may be slow (it
//! appends to the log, which may be a remote engine), so what piles up is
//! bounded:
//!
//! - [`PresenceChanges`] keeps one entry per (topic, user) whose presence
//!   changed since the announcer last took them: a join and the leave that
//!   undoes it cancel out. What waits is so at most the pairs present when
//!   the announcer last took plus those present now, however fast users come
//!   and go.
//! - [`LiveDeliveries`] keeps at most [`LiveDeliveries::MAX_PENDING`]
//!   reports; past that a report is dropped and counted. A dropped report
//!   costs a duplicate, not a loss: the other nodes keep holding that
//!   message and deliver it again when the user connects there (at least
//!   once, as SPEC §7 promises).
//!
//! Both locks are leaves (see [`crate::blocking`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::values::event::EventId;
use crate::values::topic::Topic;

/// A user's first stream subscribed to a presence topic (`joined`), or
/// their last one left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PresenceChange {
    pub topic: Topic,
    pub user: Box<str>,
    pub joined: bool,
}

/// Presence changes waiting for the announcer, in the order they happened,
/// coalesced per (topic, user).
#[derive(Default)]
pub(crate) struct PresenceChanges {
    pending: Mutex<PendingChanges>,
    ready: Notify,
}

#[derive(Default)]
struct PendingChanges {
    next: u64,
    /// By arrival.
    order: BTreeMap<u64, PresenceChange>,
    /// Where each pair's change sits in `order`.
    at: HashMap<(Topic, Box<str>), u64>,
}

impl PresenceChanges {
    /// Adds a change. Fan-out reports a pair's changes alternately (a join,
    /// then its leave, …), so a change for a pair that has one waiting
    /// undoes it: both go, and the announcer sees the pair as it was.
    pub(crate) fn push(&self, change: PresenceChange) {
        {
            let mut p = self.pending.lock();
            let key = (change.topic.clone(), change.user.clone());
            match p.at.remove(&key) {
                Some(seq) => {
                    p.order.remove(&seq);
                }
                None => {
                    let seq = p.next;
                    p.next += 1;
                    p.at.insert(key, seq);
                    p.order.insert(seq, change);
                }
            }
        }
        self.ready.notify_one();
    }

    /// Everything waiting, oldest first.
    pub(crate) fn take(&self) -> Vec<PresenceChange> {
        let mut p = self.pending.lock();
        p.at.clear();
        std::mem::take(&mut p.order).into_values().collect()
    }

    /// Resolves once a change was pushed since the last call returned.
    pub(crate) async fn pushed(&self) {
        self.ready.notified().await
    }
}

/// Clustered: direct messages this node delivered live, by user, waiting
/// to be told to the other nodes.
#[derive(Default)]
pub(crate) struct LiveDeliveries {
    pending: Mutex<Vec<(Box<str>, EventId)>>,
    ready: Notify,
    dropped: AtomicU64,
}

impl LiveDeliveries {
    /// Most reports waiting at once.
    pub(crate) const MAX_PENDING: usize = 65_536;

    /// Adds a report, or drops and counts it when [`Self::MAX_PENDING`]
    /// wait already.
    pub(crate) fn push(&self, user: &str, id: EventId) {
        {
            let mut pending = self.pending.lock();
            if pending.len() >= Self::MAX_PENDING {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            pending.push((user.into(), id));
        }
        self.ready.notify_one();
    }

    /// Everything waiting, oldest first, and how many were dropped since
    /// the last call.
    pub(crate) fn take(&self) -> (Vec<(Box<str>, EventId)>, u64) {
        let taken = std::mem::take(&mut *self.pending.lock());
        (taken, self.dropped.swap(0, Ordering::Relaxed))
    }

    /// Resolves once a report was pushed since the last call returned.
    pub(crate) async fn pushed(&self) {
        self.ready.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(topic: &str, user: &str, joined: bool) -> PresenceChange {
        PresenceChange {
            topic: Topic::new(topic).unwrap(),
            user: user.into(),
            joined,
        }
    }

    #[test]
    fn changes_come_out_in_order() {
        let c = PresenceChanges::default();
        c.push(change("room/1", "ann", true));
        c.push(change("room/2", "bob", true));
        c.push(change("room/1", "cid", true));
        let users: Vec<String> = c.take().into_iter().map(|c| c.user.into()).collect();
        assert_eq!(users, ["ann", "bob", "cid"]);
        assert!(c.take().is_empty());
    }

    #[test]
    fn a_join_and_its_leave_cancel_out_and_churn_stays_bounded() {
        let c = PresenceChanges::default();
        c.push(change("room/1", "ann", true));
        for _ in 0..10_000 {
            c.push(change("room/1", "bob", true));
            c.push(change("room/1", "bob", false));
        }
        assert_eq!(c.take(), vec![change("room/1", "ann", true)]);
        // A leave after the join was taken is the next change.
        c.push(change("room/1", "ann", false));
        assert_eq!(c.take(), vec![change("room/1", "ann", false)]);
    }

    #[tokio::test]
    async fn a_push_before_the_wait_is_not_missed() {
        let c = PresenceChanges::default();
        c.push(change("room/1", "ann", true));
        tokio::time::timeout(std::time::Duration::from_secs(5), c.pushed())
            .await
            .expect("the push before the wait wakes it");
    }

    #[test]
    fn live_deliveries_stop_at_the_bound_and_count_the_rest() {
        let d = LiveDeliveries::default();
        for i in 0..LiveDeliveries::MAX_PENDING as u64 + 10 {
            d.push("ann", EventId(i + 1));
        }
        let (taken, dropped) = d.take();
        assert_eq!(taken.len(), LiveDeliveries::MAX_PENDING);
        assert_eq!(taken[0], ("ann".into(), EventId(1)));
        assert_eq!(dropped, 10);
        d.push("bob", EventId(1));
        assert_eq!(d.take(), (vec![("bob".into(), EventId(1))], 0));
    }
}
