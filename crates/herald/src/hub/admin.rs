//! What the admin API reads and does: numbers, users, presence, closing
//! streams here or anywhere in a cluster.

use std::sync::atomic::Ordering;

use super::Hub;
use crate::delivery::fanout::{FanoutStats, Presence};
use crate::delivery::inbox::{InboxTotals, UserInboxCounts};
use crate::log::LogError;
use crate::values::pattern::Pattern;
use crate::values::topic::TopicError;

/// What an admin close did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    /// This many streams closed here (and, clustered, none elsewhere asked).
    Closed(usize),
    /// This many closed here, and the other nodes were told to close theirs.
    Forwarded(usize),
    /// No such stream (one node).
    Unknown,
}

/// One user's streams (admin).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct UserInfo {
    /// The user (a token's `sub`).
    pub user: String,
    /// Whether any stream of theirs is open on this node.
    pub online: bool,
    /// Their open connections.
    pub connections: usize,
    /// The ids of those connections.
    pub connection_ids: Vec<String>,
    /// Events waiting in this user's queues now.
    pub queued: usize,
    /// Events dropped from this user's queues by `drop_oldest`/`drop_newest`.
    pub dropped: u64,
    /// What waits for this user (SPEC §7).
    pub inbox: UserInboxCounts,
}

/// A snapshot of the hub's numbers.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct HubStats {
    /// The log's kind: `memory`, `journal`, `redis` or `nats`.
    pub log: &'static str,
    /// The id of the last committed event.
    pub head: String,
    /// Connection ids and users that fan-out can address directly.
    pub addresses: usize,
    /// Fan-out's numbers.
    #[serde(flatten)]
    pub fanout: FanoutStats,
    /// What waits in inboxes.
    pub inbox: InboxTotals,
    /// Presence joins and leaves of this node's streams written to the log
    /// since start.
    pub presence_updates: u64,
    /// Clustered: this node's name (`cluster.node_name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Clustered: every live node's numbers and their sums. The numbers
    /// above are this node's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStats>,
}

/// The nodes of a cluster, as they last reported (every 2 s).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ClusterStats {
    /// Sums over `nodes`.
    pub totals: NodeTotals,
    /// Nodes that reported in the last 10 s, by name.
    pub nodes: Vec<NodeStats>,
}

/// One node's numbers, as it reported them.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NodeStats {
    /// The node's name (`cluster.node_name`).
    pub node: String,
    /// When it reported, Unix milliseconds.
    pub reported_at_ms: u64,
    /// The id of the last event it had committed.
    pub head: String,
    /// Connection ids and users it can address directly.
    pub addresses: usize,
    /// Its fan-out numbers.
    #[serde(flatten)]
    pub fanout: FanoutStats,
}

/// Sums over the nodes of a cluster.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct NodeTotals {
    /// Nodes that reported.
    pub nodes: usize,
    /// Addresses over all nodes.
    pub addresses: usize,
    /// Fan-out numbers over all nodes.
    #[serde(flatten)]
    pub fanout: FanoutStats,
}

impl Hub {
    /// Closes one stream (it gets `retry:` and ends, so its client
    /// reconnects). False when no stream has this id.
    pub fn close_connection(&self, id: &str) -> bool {
        self.shared.fanout.close(Some(id), None) > 0
    }

    /// Closes a stream wherever it is. Clustered, one this node does not
    /// hold is passed to the others through the log (the node holding it
    /// closes it as it reads the record): `Ok(Forwarded)`.
    pub(crate) async fn close_connection_anywhere(&self, id: &str) -> Result<Closing, LogError> {
        if self.close_connection(id) {
            return Ok(Closing::Closed(1));
        }
        let Some(cluster) = self.shared.log.cluster() else {
            return Ok(Closing::Unknown);
        };
        forward_close(cluster, Some(id.to_owned()), None).await?;
        Ok(Closing::Forwarded(0))
    }

    /// Closes every stream of a user, on this node and, clustered, on every
    /// other (through the log): how many closed here.
    pub(crate) async fn close_user_anywhere(&self, user: &str) -> Result<Closing, LogError> {
        let here = self.close_user(user);
        let Some(cluster) = self.shared.log.cluster() else {
            return Ok(Closing::Closed(here));
        };
        forward_close(cluster, None, Some(user.to_owned())).await?;
        Ok(Closing::Forwarded(here))
    }

    /// Closes every stream of a user; returns how many.
    pub fn close_user(&self, user: &str) -> usize {
        self.shared.fanout.close(None, Some(user))
    }

    /// A user's open streams.
    pub fn user(&self, user: &str) -> UserInfo {
        let conns = self.shared.fanout.connections_of(user);
        UserInfo {
            user: user.to_owned(),
            online: !conns.is_empty(),
            connections: conns.len(),
            connection_ids: conns.iter().map(|c| c.id.to_string()).collect(),
            queued: conns.iter().map(|c| c.queued()).sum(),
            dropped: conns.iter().map(|c| c.dropped()).sum(),
            inbox: self.shared.inboxes().user_counts(user),
        }
    }
    /// Who is on a topic or pattern (connections per user, and anonymous ones).
    pub fn presence(&self, pattern: &str) -> Result<Presence, TopicError> {
        Ok(self.shared.fanout.presence(&Pattern::parse(pattern)?))
    }

    /// This node's numbers (`GET /v1/admin/stats`).
    pub fn stats(&self) -> HubStats {
        HubStats {
            log: self.shared.log.kind(),
            head: self.shared.fanout.head().to_string(),
            addresses: self.shared.limiter.addresses(),
            fanout: self.shared.fanout.stats(),
            inbox: self.shared.inboxes().totals(),
            presence_updates: self.shared.metrics.presence_updates.load(Ordering::Relaxed),
            node: self.shared.node.clone(),
            cluster: None,
        }
    }

    /// This node's numbers as the other nodes read them.
    pub(super) fn node_stats(&self) -> NodeStats {
        NodeStats {
            node: self.shared.node.clone().unwrap_or_default(),
            reported_at_ms: crate::log::now_ms(),
            head: self.shared.fanout.head().to_string(),
            addresses: self.shared.limiter.addresses(),
            fanout: self.shared.fanout.stats(),
        }
    }

    /// [`Hub::stats`], and clustered, every live node's numbers with their
    /// sums. When the engine cannot be read, `cluster` holds this node only.
    pub(crate) async fn cluster_stats(&self) -> HubStats {
        let mut stats = self.stats();
        let Some(cluster) = self.shared.log.cluster() else {
            return stats;
        };
        let own = self.node_stats();
        let mut nodes: Vec<NodeStats> = match cluster.nodes().await {
            Ok(reports) => reports
                .into_iter()
                .filter_map(|r| serde_json::from_value::<NodeStats>(r).ok())
                .filter(|n| n.node != own.node)
                .collect(),
            Err(err) => {
                tracing::warn!(%err, "could not read the other nodes' numbers");
                Vec::new()
            }
        };
        nodes.push(own);
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        let mut totals = NodeTotals {
            nodes: nodes.len(),
            ..NodeTotals::default()
        };
        for n in &nodes {
            totals.addresses += n.addresses;
            totals.fanout.add(&n.fanout);
        }
        stats.cluster = Some(ClusterStats { totals, nodes });
        stats
    }
}

/// Asks every node, through the shared log, to close these streams.
async fn forward_close(
    cluster: &dyn crate::log::ClusterLog,
    connection: Option<String>,
    user: Option<String>,
) -> Result<(), LogError> {
    cluster
        .append_control(vec![crate::log::Control::Close { connection, user }])
        .await
}
