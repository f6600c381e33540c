//! The hub's background work, owned in one place.
//!
//! Two kinds of task, each kind with its own tracker and stop signal:
//!
//! - **Hand-overs** take what fan-out hands over (see [`crate::delivery::handoff`]):
//!   presence joins and leaves, which become `herald.presence` events, and,
//!   clustered, direct messages delivered live here, which the other nodes
//!   must stop holding.
//! - **Timers**: the inbox sweep (every 5 s), forgetting idle rate-limit
//!   buckets (every 60 s) and, clustered, this node's report to the others
//!   (every 2 s).
//!
//! - **The courier** (`delivery/courier.rs`) writes events into the
//!   sockets of idle streams. It runs as long as the hub, since streams
//!   may outlive the other tasks.
//!
//! [`Hub::stop_background`] stops the first two in that order, once the streams have
//! ended: the hand-overs first take what is left (the leaves of the streams
//! that just closed) and write it, then the timers stop. Dropping the last
//! handle of a hub stops both at once, without the last write. Every task
//! holds the hub weakly, so a task never keeps a dropped hub alive.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Hub, Shared};
use crate::delivery::handoff::{LiveDeliveries, PresenceChanges};
use crate::log::{Control, PresenceUpdate};
use crate::metrics::Metrics;

/// How often a clustered node reports its numbers to the others.
const NODE_REPORT_EVERY: Duration = Duration::from_secs(2);

/// Most presence updates in one append.
const PRESENCE_BATCH: usize = 1000;

/// The background tasks of one hub.
pub(super) struct Tasks {
    handoffs: TaskTracker,
    timers: TaskTracker,
    stop_handoffs: CancellationToken,
    stop_timers: CancellationToken,
    /// Stops the courier, which runs as long as the hub: streams may live
    /// past [`Hub::stop_background`], and their events go through it.
    stop_courier: CancellationToken,
}

/// What fan-out hands over, when the configuration asks for it.
#[derive(Default)]
pub(super) struct Handoffs {
    pub presence: Option<Arc<PresenceChanges>>,
    pub live_deliveries: Option<Arc<LiveDeliveries>>,
}

impl Tasks {
    pub(super) fn new() -> Tasks {
        Tasks {
            handoffs: TaskTracker::new(),
            timers: TaskTracker::new(),
            stop_handoffs: CancellationToken::new(),
            stop_timers: CancellationToken::new(),
            stop_courier: CancellationToken::new(),
        }
    }

    /// Starts every task `shared` needs on `runtime`.
    pub(super) fn start(
        shared: &Arc<Shared>,
        runtime: &tokio::runtime::Handle,
        handoffs: Handoffs,
    ) {
        let tasks = &shared.tasks;
        let weak = Arc::downgrade(shared);
        if let Some(changes) = handoffs.presence {
            let stop = tasks.stop_handoffs.clone();
            let clustered = shared.log.clustered();
            tasks.handoffs.spawn_on(
                announce_presence(weak.clone(), changes, clustered, stop),
                runtime,
            );
        }
        if let Some(reports) = handoffs.live_deliveries {
            let stop = tasks.stop_handoffs.clone();
            tasks
                .handoffs
                .spawn_on(report_live_deliveries(weak.clone(), reports, stop), runtime);
        }
        let every = |period: Duration, work: fn(&Shared)| {
            let (weak, stop) = (weak.clone(), tasks.stop_timers.clone());
            async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.cancelled() => break,
                    }
                    let Some(shared) = weak.upgrade() else { break };
                    work(&shared);
                }
            }
        };
        tasks.timers.spawn_on(
            every(Duration::from_secs(5), |s| {
                s.inboxes().sweep(crate::log::now_ms())
            }),
            runtime,
        );
        // The courier writes into the sockets of idle streams
        // (`delivery/courier.rs`), for as long as the hub lives: it holds
        // neither the hub nor a stream.
        let courier = shared.fanout.courier();
        for index in 0..courier.tasks() {
            let courier = courier.clone();
            let metrics = shared.metrics.clone();
            let stop = tasks.stop_courier.clone();
            runtime.spawn(async move {
                let wrote = |depth: usize, age: Duration| {
                    Metrics::add(&metrics.courier_writes, 1);
                    metrics.queue_depth.observe(depth as f64);
                    metrics.write_latency.observe(age.as_secs_f64());
                };
                courier.run(index, wrote, stop.cancelled()).await
            });
        }
        courier.start();
        // Heartbeats: a quiet stream gets its `: ping` one interval after
        // its last write, at most a tick (a quarter interval, at most 1 s)
        // late. One tick for every stream instead of a timer in each: a
        // stream's timer is 112 bytes, and moving it is a trip through the
        // timer wheel.
        let beat = shared.config.heartbeat();
        tasks.timers.spawn_on(
            every(
                (beat / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)),
                |s| {
                    let every_ms = s.config.heartbeat().as_millis() as u64;
                    s.fanout
                        .heartbeat_tick(crate::delivery::connection::clock_ms(), every_ms)
                },
            ),
            runtime,
        );
        if shared.rates.is_active() {
            tasks.timers.spawn_on(
                every(Duration::from_secs(60), |s| s.rates.forget_idle()),
                runtime,
            );
        }
        if shared.node.is_some() {
            let stop = tasks.stop_timers.clone();
            tasks.timers.spawn_on(report_this_node(weak, stop), runtime);
        }
    }

    /// Stops the hand-overs (each writes what is left first), then the
    /// timers; returns once all have ended.
    pub(super) async fn stop(&self) {
        self.stop_handoffs.cancel();
        self.handoffs.close();
        self.handoffs.wait().await;
        self.stop_timers.cancel();
        self.timers.close();
        self.timers.wait().await;
    }

    /// Tasks still running.
    #[cfg(test)]
    pub(super) fn running(&self) -> usize {
        self.handoffs.len() + self.timers.len()
    }

    /// Tells every task to end now (the hub is gone).
    pub(super) fn abandon(&self) {
        self.stop_handoffs.cancel();
        self.stop_timers.cancel();
        self.stop_courier.cancel();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.tasks.abandon();
    }
}

impl Hub {
    /// Stops the hub's background work, in order: what fan-out handed over
    /// is written (presence leaves of the streams that closed, clustered
    /// delivery reports), then the timers stop. Call it last in a shutdown,
    /// once the streams have ended; the hub still publishes afterwards, but
    /// announces no presence and sweeps no inbox.
    pub async fn stop_background(&self) {
        self.shared.tasks.stop().await;
    }
}

/// Publishes `herald.presence` events for the joins and leaves fan-out
/// reports, in the order they happened, as many as have piled up per append.
/// Clustered, it also compares what the engine counts this node in with
/// the streams here every few seconds, and announces the difference.
async fn announce_presence(
    shared: Weak<Shared>,
    changes: Arc<PresenceChanges>,
    clustered: bool,
    stop: CancellationToken,
) {
    let mut sync = tokio::time::interval(NODE_REPORT_EVERY);
    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (mut updates, last) = tokio::select! {
            // Stopping first: what waits is taken either way.
            biased;
            _ = stop.cancelled() => (updates_of(&changes), true),
            _ = changes.pushed() => (updates_of(&changes), false),
            _ = sync.tick(), if clustered => {
                let Some(shared) = shared.upgrade() else { break };
                (differences(&shared).await, false)
            }
        };
        if !updates.is_empty() {
            let Some(shared) = shared.upgrade() else {
                break;
            };
            while !updates.is_empty() {
                let rest = updates.split_off(updates.len().min(PRESENCE_BATCH));
                let count = updates.len() as u64;
                match shared.log.append_presence(updates).await {
                    Ok(()) => Metrics::add(&shared.metrics.presence_updates, count),
                    Err(err) => {
                        Metrics::add(&shared.metrics.log_errors, 1);
                        tracing::warn!(%err, count, "could not publish presence events");
                    }
                }
                updates = rest;
            }
        }
        if last {
            break;
        }
    }
}

fn updates_of(changes: &PresenceChanges) -> Vec<PresenceUpdate> {
    changes
        .take()
        .into_iter()
        .map(|c| PresenceUpdate::new(c.topic, c.user.into(), c.joined))
        .collect()
}

/// Clustered: the joins and leaves that make the engine's count of this
/// node's presence match the streams here. The engine is read first, then
/// the streams: a change between the two is announced twice (harmless),
/// never missed.
async fn differences(shared: &Shared) -> Vec<PresenceUpdate> {
    let Some(cluster) = shared.log.cluster() else {
        return Vec::new();
    };
    let Ok(counted) = cluster.presence_here().await else {
        return Vec::new();
    };
    let here = shared.fanout.present_pairs();
    let counted_set: std::collections::HashSet<_> = counted.iter().cloned().collect();
    let here_set: std::collections::HashSet<_> = here.iter().cloned().collect();
    let joins = here
        .into_iter()
        .filter(|p| !counted_set.contains(p))
        .map(|(t, u)| PresenceUpdate::new(t, u, true));
    let leaves = counted
        .into_iter()
        .filter(|p| !here_set.contains(p))
        .map(|(t, u)| PresenceUpdate::new(t, u, false));
    joins.chain(leaves).collect()
}

/// Clustered: tells every node which direct messages this one delivered
/// live, so that nodes where the user had no stream stop holding them.
/// As many as have piled up go in one append, a record per user.
async fn report_live_deliveries(
    shared: Weak<Shared>,
    reports: Arc<LiveDeliveries>,
    stop: CancellationToken,
) {
    loop {
        let last = tokio::select! {
            _ = reports.pushed() => false,
            _ = stop.cancelled() => true,
        };
        let (taken, dropped) = reports.take();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "too many delivery reports waited; the other nodes may deliver those messages again"
            );
        }
        if !taken.is_empty() {
            let Some(shared) = shared.upgrade() else {
                break;
            };
            let mut by_user: std::collections::BTreeMap<
                Box<str>,
                Vec<crate::values::event::EventId>,
            > = Default::default();
            for (user, id) in taken {
                by_user.entry(user).or_default().push(id);
            }
            let records = by_user
                .into_iter()
                .map(|(user, ids)| Control::Delivered {
                    user: user.into(),
                    ids,
                })
                .collect();
            let Some(cluster) = shared.log.cluster() else {
                break;
            };
            if let Err(err) = cluster.append_control(records).await {
                // The other nodes keep the messages: the user may get them
                // again there (at least once, never lost).
                tracing::warn!(%err, "could not tell the cluster about messages delivered here");
            }
        }
        if last {
            break;
        }
    }
}

/// Clustered: reports this node's numbers to the others and lets the log
/// do its upkeep, every [`NODE_REPORT_EVERY`].
async fn report_this_node(shared: Weak<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(NODE_REPORT_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let Some(shared) = shared.upgrade() else {
            break;
        };
        let hub = Hub { shared };
        let Some(cluster) = hub.shared.log.cluster() else {
            break;
        };
        let stats = hub.node_stats();
        let Ok(json) = serde_json::to_value(&stats) else {
            continue;
        };
        if let Err(err) = cluster.report_node(&stats.node, json).await {
            tracing::debug!(%err, "could not report this node's numbers");
        }
        cluster.maintain().await;
    }
}
