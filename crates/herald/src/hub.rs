//! The hub: one cheap-to-clone handle over everything a running Herald
//! shares — configuration, the log, fan-out, limits and the shutdown signal.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::auth::{now_secs, AuthError, Authenticator, Identity, Proof};
use crate::config::{Config, ConfigError};
use crate::connection::Connection;
use crate::event::{EventId, SharedEvent};
use crate::fanout::{Fanout, FanoutStats, Presence};
use crate::inbox::{AckOutcome, InboxTotals, Inboxes, UserInboxCounts};
use crate::limits::{ConnectionLimiter, LimitRefusal};
use crate::log::memory::MemoryLogSettings;
use crate::log::{DurableLog, EventLog, LogError, MemoryLog, PresenceUpdate, ReadFrom};
use crate::metrics::Metrics;
use crate::pattern::Pattern;
use crate::publish::{check_rights, validate_batch, PublishError, PublishRequest};
use crate::rate::RateLimits;
use crate::selector::Selector;
use crate::stream::{EventStream, Writer};
use crate::subscribe::{
    parse_event_types, parse_last_event_id, parse_patterns, Refusal, Start, SubscribeError,
    SubscribeRequest,
};
use crate::topic::TopicError;

/// A handle to a running hub. Clone it freely: clones share one hub.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use herald::{Config, Hub, PublishRequest};
/// let hub = Hub::new(Config { memory: true, ..Config::default() })?;
/// // Mount the HTTP API (SSE endpoint included) in an axum application:
/// let app = axum::Router::new().nest("/herald", hub.router());
/// // Publish from Rust:
/// let id = hub.publish(PublishRequest::topic("jobs/42", "done")).await?;
/// # let _ = (app, id); Ok(()) }
/// ```
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    log: Arc<dyn EventLog>,
    fanout: Arc<Fanout>,
    limiter: ConnectionLimiter,
    /// `None`: no auth key configured, dev mode.
    auth: Option<Authenticator>,
    rates: RateLimits,
    metrics: Arc<Metrics>,
    registry: prometheus_client::registry::Registry,
    state: crate::state::StateStore,
    /// Cancelled when the hub starts shutting down: streams flush, send a
    /// jittered `retry:` and end; new streams are refused for now.
    shutdown: CancellationToken,
    next_key: AtomicU64,
    /// Clustered: this node's name.
    node: Option<String>,
}

/// Why a change of an open stream's subscriptions was refused.
#[derive(Debug, thiserror::Error)]
pub enum ResubscribeError {
    #[error("no open connection has the id {0:?}")]
    UnknownConnection(String),
    #[error(transparent)]
    Subscribe(#[from] SubscribeError),
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// Most ids one acknowledgement may name.
pub const MAX_ACK_IDS: usize = 1000;

/// Why an acknowledgement was refused.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("an acknowledgement names at most {MAX_ACK_IDS} ids; got {0}")]
    TooMany(usize),
    #[error("the inbox store failed: {0}")]
    Store(String),
    /// Clustered: the engine could not take the acknowledgement.
    #[error("acknowledgements cannot be recorded now: {0}")]
    Unavailable(String),
}

/// Why a hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] crate::log::durable::OpenError),
    #[error(transparent)]
    Cluster(#[from] crate::log::engine::ConnectError),
    #[error("cluster.url is set: a clustered hub is started with Hub::connect, which reaches the engine first")]
    NeedsConnect,
}

/// A registered connection and where its backlog starts.
pub(crate) struct Opened {
    pub conn: Arc<Connection>,
    pub permit: crate::limits::ConnectionPermit,
    pub head: EventId,
    pub start: Start,
    pub valid_until: Option<u64>,
    /// A fresh stream sends its topics' retained state (SPEC §6): the
    /// first page, read here before the stream starts (so a change made
    /// once a client has its `herald.connected` reaches it live), and where
    /// the rest is read from, page by page as the client takes it.
    pub snapshot: Option<(bytes::Bytes, crate::state::SnapshotCursor)>,
    /// What waited for the user (SPEC §7), sent before anything else.
    pub waiting: Vec<crate::event::SharedEvent>,
    /// The Last-Event-ID the stream stands at before its backlog: sent
    /// after the waiting events, whose ids may lie anywhere.
    pub position: String,
}

/// What `subscribe` gives back.
pub enum Subscription {
    /// An open stream; its connection id is in `herald.connected`.
    Stream {
        connection_id: Arc<str>,
        body: EventStream,
    },
    /// Refused for now (limits, shutdown); the client should retry later.
    Refused(Refusal),
}

/// What an admin close did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
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
    pub user: String,
    pub online: bool,
    pub connections: usize,
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
    pub log: &'static str,
    pub head: String,
    pub addresses: usize,
    #[serde(flatten)]
    pub fanout: FanoutStats,
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
    pub node: String,
    pub reported_at_ms: u64,
    pub head: String,
    pub addresses: usize,
    #[serde(flatten)]
    pub fanout: FanoutStats,
}

/// Sums over the nodes of a cluster.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct NodeTotals {
    pub nodes: usize,
    pub addresses: usize,
    #[serde(flatten)]
    pub fanout: FanoutStats,
}

impl Shared {
    fn inboxes(&self) -> &Arc<Inboxes> {
        self.fanout.inboxes().expect("a hub's fan-out has inboxes")
    }
}

/// Publishes `herald.presence` events for the joins and leaves fan-out
/// reports, in the order they happened, as many as have piled up per append.
/// Clustered, it also compares what the engine counts this node in with
/// the streams here every few seconds, and announces the difference.
/// Ends when the hub is gone.
async fn announce_presence(
    shared: std::sync::Weak<Shared>,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<crate::fanout::PresenceChange>,
    clustered: bool,
) {
    let mut batch = Vec::new();
    let mut sync = tokio::time::interval(NODE_REPORT_EVERY);
    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let updates: Vec<PresenceUpdate> = tokio::select! {
            n = changes.recv_many(&mut batch, 1000) => {
                if n == 0 {
                    break;
                }
                batch
                    .drain(..)
                    .map(|c| PresenceUpdate::new(c.topic, c.user.into(), c.joined))
                    .collect()
            }
            _ = sync.tick(), if clustered => {
                let Some(shared) = shared.upgrade() else { break };
                // The engine first, then the streams here: a change between
                // the two is announced twice (harmless), never missed.
                let counted = match shared.log.presence_here().await {
                    Ok(Some(counted)) => counted,
                    _ => continue,
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
        };
        if updates.is_empty() {
            continue;
        }
        let Some(shared) = shared.upgrade() else {
            break;
        };
        let count = updates.len() as u64;
        match shared.log.append_presence(updates).await {
            Ok(()) => Metrics::add(&shared.metrics.presence_updates, count),
            Err(err) => {
                Metrics::add(&shared.metrics.log_errors, 1);
                tracing::warn!(%err, count, "could not publish presence events");
            }
        }
    }
}

/// The history retention `[history]` asks for.
fn history_settings(config: &Config) -> MemoryLogSettings {
    let h = &config.history;
    MemoryLogSettings {
        max_events_per_topic: h.max_events_per_topic,
        max_age: (h.max_age_secs != 0).then(|| Duration::from_secs(h.max_age_secs)),
        idempotency_window: Duration::from_secs(h.idempotency_window_secs),
        max_idempotency_keys: h.max_idempotency_keys,
        max_bytes: h.max_bytes,
        max_topics: h.max_topics,
    }
}

/// Clustered: tells every node which direct messages this one delivered
/// live, so that nodes where the user had no stream stop holding them.
/// As many as have piled up go in one append, a record per user.
async fn report_live_deliveries(
    log: Arc<dyn EventLog>,
    mut reports: tokio::sync::mpsc::UnboundedReceiver<(Box<str>, EventId)>,
) {
    let mut batch = Vec::new();
    while reports.recv_many(&mut batch, 4096).await > 0 {
        let mut by_user: std::collections::BTreeMap<Box<str>, Vec<EventId>> = Default::default();
        for (user, id) in batch.drain(..) {
            by_user.entry(user).or_default().push(id);
        }
        let records = by_user
            .into_iter()
            .map(|(user, ids)| crate::log::Control::Delivered {
                user: user.into(),
                ids,
            })
            .collect();
        if let Err(err) = log.append_control(records).await {
            // The other nodes keep the messages: the user may get them again
            // there (at least once, never lost).
            tracing::warn!(%err, "could not tell the cluster about messages delivered here");
        }
    }
}

/// How often a clustered node reports its numbers to the others.
const NODE_REPORT_EVERY: Duration = Duration::from_secs(2);

pub use crate::log::PRESENCE_EVENT;

impl Hub {
    /// A hub with the log its configuration asks for: the durable journal
    /// in `data_dir`, or memory only with `memory = true`.
    pub fn new(config: Config) -> Result<Hub, StartError> {
        config.validate()?;
        if config.cluster.url.is_some() {
            return Err(StartError::NeedsConnect);
        }
        let h = &config.history;
        let settings = history_settings(&config);
        let log: Arc<dyn EventLog> = if config.memory {
            Arc::new(MemoryLog::new(settings))
        } else {
            let dir = config.data_dir.join("journal");
            let (log, report) =
                crate::blocking::at_start(|| DurableLog::open(&dir, settings, h.fsync))?;
            if report.cut_bytes > 0 {
                tracing::warn!(
                    cut_bytes = report.cut_bytes,
                    "the journal ended in a write a crash interrupted; cut back to the last whole record"
                );
            }
            tracing::info!(
                dir = %dir.display(),
                events_read = report.events_read,
                retained = report.retained,
                next_id = report.next_id,
                "journal opened"
            );
            Arc::new(log)
        };
        Ok(Hub::with_log(config, log)?)
    }

    /// A hub as its configuration asks, clustered or not: with
    /// `cluster.url` it joins the cluster's log on the engine (waiting up
    /// to `cluster.connect_timeout_secs` for it); otherwise as [`Hub::new`].
    pub async fn connect(config: Config) -> Result<Hub, StartError> {
        config.validate()?;
        let Some(url) = config.cluster.url.clone() else {
            return Hub::new(config);
        };
        let c = &config.cluster;
        let options = crate::log::engine::ClusterOptions {
            name: c.name.clone(),
            max_log_events: c.max_log_events,
            connect_timeout: Duration::from_secs(c.connect_timeout_secs),
            apply_timeout: Duration::from_secs(5),
            node: match &c.node_name {
                name if !name.is_empty() => name.clone(),
                _ => format!("node-{:08x}", fastrand::u32(..)),
            },
        };
        tracing::info!(node = options.node, "this node's name in the cluster");
        let settings = history_settings(&config);
        let log: Arc<dyn EventLog> = if url.starts_with("nats://") {
            Arc::new(crate::log::nats::NatsLog::connect(&url, settings, options).await?)
        } else {
            Arc::new(crate::log::redis::RedisLog::connect(&url, settings, options).await?)
        };
        Ok(Hub::with_log(config, log)?)
    }

    /// A hub on any implementation of the log seam.
    pub fn with_log(config: Config, log: Arc<dyn EventLog>) -> Result<Hub, ConfigError> {
        config.validate()?;
        let auth = Authenticator::from_config(&config.auth).map_err(|e| ConfigError {
            setting: e.source_name,
            reason: e.reason,
        })?;
        let inbox_settings = crate::inbox::InboxSettings {
            max_per_user: config.inbox.max_per_user,
            max_age_ms: config.inbox.max_age_secs.saturating_mul(1000),
            sync: config.history.fsync != crate::config::Fsync::Never,
        };
        // Clustered, every node rebuilds the inboxes from the shared log at
        // start (see `CommitSink::recovered`): no file of its own.
        let inboxes = match config.memory || log.clustered() {
            true => Inboxes::in_memory(inbox_settings),
            false => {
                std::fs::create_dir_all(&config.data_dir).map_err(|e| ConfigError {
                    setting: "data_dir".into(),
                    reason: format!("cannot create {}: {e}", config.data_dir.display()),
                })?;
                let path = config.data_dir.join("inbox.log");
                Inboxes::open(&path, inbox_settings).map_err(|e| ConfigError {
                    setting: "data_dir".into(),
                    reason: format!("cannot open {}: {e}", path.display()),
                })?
            }
        };
        let mut fanout = Fanout::with_inboxes(Arc::new(inboxes));
        let runtime = tokio::runtime::Handle::try_current().ok();
        let mut presence_changes = None;
        if !config.presence.topics.is_empty() {
            match &runtime {
                Some(_) => {
                    let patterns = config
                        .presence
                        .topics
                        .iter()
                        .filter_map(|p| Pattern::parse(p).ok())
                        .collect();
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    fanout = fanout.announce_presence(patterns, tx);
                    presence_changes = Some(rx);
                }
                None => tracing::warn!(
                    "presence.topics is set but the hub was built outside a tokio runtime: no presence events"
                ),
            }
        }
        let mut live_deliveries = None;
        if log.clustered() && runtime.is_some() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            fanout = fanout.report_live_deliveries(tx);
            live_deliveries = Some(rx);
        }
        let fanout = Arc::new(fanout);
        fanout.start_at(log.attach(fanout.clone()));
        let limits = &config.limits;
        let limiter = ConnectionLimiter::new(
            limits.max_connections,
            limits.max_connections_per_ip,
            limits.max_connections_per_user,
        );
        let rates = RateLimits::new(limits.publish_rate_per_sec, limits.connect_rate_per_ip);
        // Clustered, retained state lives in the engine.
        let state_file =
            (!config.memory && !log.clustered()).then(|| config.data_dir.join("state.json"));
        let state = crate::state::StateStore::open(state_file).map_err(|e| ConfigError {
            setting: "data_dir".into(),
            reason: format!("cannot read the state file: {e}"),
        })?;
        let node = log.node().map(str::to_owned);
        let metrics = Arc::new(Metrics::new());
        state.report(&metrics);
        let registry = crate::metrics::registry(
            fanout.clone(),
            limiter.clone(),
            metrics.clone(),
            log.clone(),
        );
        let hub = Hub {
            shared: Arc::new(Shared {
                config,
                log,
                fanout,
                limiter,
                auth,
                rates,
                metrics,
                registry,
                state,
                shutdown: CancellationToken::new(),
                next_key: AtomicU64::new(1),
                node,
            }),
        };
        if let Some(rt) = &runtime {
            if let Some(changes) = presence_changes {
                let clustered = hub.shared.log.clustered();
                rt.spawn(announce_presence(
                    Arc::downgrade(&hub.shared),
                    changes,
                    clustered,
                ));
            }
            if hub.shared.node.is_some() {
                let weak = Arc::downgrade(&hub.shared);
                rt.spawn(async move {
                    let mut tick = tokio::time::interval(NODE_REPORT_EVERY);
                    loop {
                        tick.tick().await;
                        let Some(shared) = weak.upgrade() else { break };
                        let hub = Hub { shared };
                        let stats = hub.node_stats();
                        let Ok(json) = serde_json::to_value(&stats) else {
                            continue;
                        };
                        if let Err(err) = hub.shared.log.report_node(&stats.node, json).await {
                            tracing::debug!(%err, "could not report this node's numbers");
                        }
                        hub.shared.log.maintain().await;
                    }
                });
            }
            if let Some(reports) = live_deliveries {
                rt.spawn(report_live_deliveries(hub.shared.log.clone(), reports));
            }
            let weak = Arc::downgrade(&hub.shared);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    let Some(shared) = weak.upgrade() else { break };
                    shared.inboxes().sweep(crate::log::now_ms());
                }
            });
            if hub.shared.rates.is_active() {
                let weak = Arc::downgrade(&hub.shared);
                rt.spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(60));
                    loop {
                        tick.tick().await;
                        let Some(shared) = weak.upgrade() else { break };
                        shared.rates.forget_idle();
                    }
                });
            }
        }
        Ok(hub)
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.shared.log
    }

    pub fn fanout(&self) -> &Arc<Fanout> {
        &self.shared.fanout
    }

    /// True when no auth key is configured (SPEC §1 dev mode).
    pub fn dev_mode(&self) -> bool {
        self.shared.auth.is_none()
    }

    /// Resolves credentials (a bearer token, cookie or `access_token`
    /// value; `None` when none were sent) into an identity.
    pub async fn authenticate(&self, credentials: Option<&str>) -> Result<Identity, AuthError> {
        match &self.shared.auth {
            None => Ok(Identity::unrestricted(Proof::DevMode)),
            Some(auth) => auth.authenticate(credentials).await,
        }
    }

    pub fn rates(&self) -> &RateLimits {
        &self.shared.rates
    }

    /// Publishes one event with full rights (code in this process); returns
    /// its id once it is in the log.
    pub async fn publish(&self, request: PublishRequest) -> Result<EventId, PublishError> {
        Ok(self.publish_batch(vec![request]).await?[0])
    }

    /// Publishes a batch with full rights, all or nothing; returns the ids
    /// in order. A repeated idempotency key returns the first publish's id.
    pub async fn publish_batch(
        &self,
        requests: Vec<PublishRequest>,
    ) -> Result<Vec<EventId>, PublishError> {
        self.publish_as(&Identity::unrestricted(Proof::Embedded), requests)
            .await
    }

    /// Publishes a batch on behalf of `identity`, checking its rights on
    /// every event first.
    pub async fn publish_as(
        &self,
        identity: &Identity,
        requests: Vec<PublishRequest>,
    ) -> Result<Vec<EventId>, PublishError> {
        let drafts = validate_batch(requests, &self.shared.config.limits)?;
        let single = drafts.len() == 1;
        for (index, draft) in drafts.iter().enumerate() {
            check_rights(identity, draft).map_err(|e| match single {
                true => PublishError::Auth(e),
                false => PublishError::InBatch {
                    index,
                    source: Box::new(PublishError::Auth(e)),
                },
            })?;
        }
        let addressed = drafts
            .iter()
            .any(|d| !d.target.users.is_empty() && !d.target.broadcast);
        let appended = match self.shared.log.append(drafts).await {
            Ok(appended) => appended,
            Err(err) => {
                Metrics::add(&self.shared.metrics.log_errors, 1);
                return Err(err.into());
            }
        };
        if addressed {
            // Fan-out has held what waits for users by now: answer once
            // it is in the inbox file, so it survives a crash. A failed
            // write is counted and said by the writer and in readiness;
            // the events themselves are committed.
            let _ = self.shared.inboxes().written().await;
        }
        let duplicates = appended.iter().filter(|a| a.duplicate).count() as u64;
        Metrics::add(
            &self.shared.metrics.published,
            appended.len() as u64 - duplicates,
        );
        Metrics::add(&self.shared.metrics.publish_duplicates, duplicates);
        Ok(appended.into_iter().map(|a| a.id).collect())
    }

    /// Publishes `request` as the `state` event of a retained value's
    /// change, only if the value's version is still the one `guard` expects (see
    /// [`EventLog::append_guarded`]).
    pub(crate) async fn publish_guarded(
        &self,
        identity: &Identity,
        request: PublishRequest,
        guard: crate::log::StateGuard,
    ) -> Result<Result<EventId, crate::log::Conflict>, PublishError> {
        let mut drafts = validate_batch(vec![request], &self.shared.config.limits)?;
        check_rights(identity, &drafts[0]).map_err(PublishError::Auth)?;
        // The one way a `state` event enters the log (publishers may not
        // name it: see `publish::STATE_EVENT`).
        drafts[0].event_type = Some(crate::publish::STATE_EVENT.into());
        match self
            .shared
            .log
            .append_guarded(drafts.remove(0), guard)
            .await
        {
            Ok(Ok(appended)) => {
                Metrics::add(&self.shared.metrics.published, 1);
                Ok(Ok(appended.id))
            }
            Ok(Err(conflict)) => Ok(Err(conflict)),
            Err(err) => {
                Metrics::add(&self.shared.metrics.log_errors, 1);
                Err(err.into())
            }
        }
    }

    /// Opens a stream, or says why not (see SPEC §3).
    pub async fn subscribe(
        &self,
        request: SubscribeRequest,
    ) -> Result<Subscription, SubscribeError> {
        let opened = match self.open(request).await? {
            Ok(opened) => opened,
            Err(refusal) => return Ok(Subscription::Refused(refusal)),
        };
        let connection_id = opened.conn.id.clone();
        let writer = Writer::new(self.clone(), opened);
        Ok(Subscription::Stream {
            connection_id,
            body: writer.into_stream(),
        })
    }

    /// What SSE streams and long polls share: checks, limits, registration
    /// with fan-out, and where the backlog starts. The connection is
    /// registered; whoever holds the result must unregister it when done.
    pub(crate) async fn open(
        &self,
        request: SubscribeRequest,
    ) -> Result<Result<Opened, Refusal>, SubscribeError> {
        let config = &self.shared.config;
        let patterns = parse_patterns(&request.topics, config.limits.max_topics_per_connection)?;
        let event_types = parse_event_types(&request.event_types)?;
        if let Some(n) = request.history {
            if n > config.stream.max_history {
                return Err(SubscribeError::BadParameter(
                    "history",
                    format!(
                        "asks for {n} events; the limit is {}",
                        config.stream.max_history
                    ),
                ));
            }
        }
        let identity = match request.identity.clone() {
            Some(identity) => identity,
            None => self.authenticate(None).await?,
        };
        if let Some(denied) = patterns.iter().find(|p| !identity.subscribe.allows(p)) {
            return Err(SubscribeError::Auth(match identity.proof {
                Proof::Anonymous => AuthError::Missing(format!("reading {denied} needs a token")),
                _ => AuthError::Forbidden(format!("the token may not read {denied}")),
            }));
        }
        if identity.valid_until.is_some_and(|t| t <= now_secs()) {
            return Err(SubscribeError::Auth(AuthError::Expired));
        }
        if self.is_shutting_down() {
            self.shared.metrics.stream_refused("shutting_down");
            return Ok(Err(Refusal::shutting_down(self.jittered_retry_ms())));
        }
        if let Some(ip) = request.peer {
            if let Err(wait) = self.shared.rates.check_connect(ip) {
                let retry = (wait.as_millis() as u64).max(self.jittered_retry_ms());
                let refusal = Refusal::limit(LimitRefusal::ConnectRate, retry);
                self.shared.metrics.stream_refused(refusal.error);
                return Ok(Err(refusal));
            }
        }
        let user = identity.user.as_deref();
        let permit = match self.shared.limiter.try_acquire(request.peer, user) {
            Ok(permit) => permit,
            Err(reason) => {
                self.shared.metrics.stream_refused(reason.code());
                return Ok(Err(Refusal::limit(reason, self.jittered_retry_ms())));
            }
        };
        let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
        let connection_id: Arc<str> = new_connection_id(key).into();
        let selector = Selector {
            connection_id: connection_id.clone(),
            patterns,
            event_types,
            user: identity.user.clone(),
            meta: identity.meta.clone(),
        };
        let mut conn = Connection::new(
            key,
            connection_id.clone(),
            selector,
            request.peer,
            config.stream.queue_capacity,
            config.stream.overflow,
            request.transport.clone(),
        );
        conn.rights = identity.subscribe.clone();
        conn.announces_presence = !request.long_poll;
        let conn = Arc::new(conn);
        let resumed_after = request
            .last_event_id
            .as_deref()
            .and_then(parse_last_event_id);
        if let Some(after) = resumed_after {
            // Clustered, the id may come from a node ahead of this one.
            self.shared.log.catch_up(after).await;
        }
        let head = self.shared.fanout.register(conn.clone());
        // From here on the writer owns the registration: dropping it (on any
        // error below too) unregisters the connection.
        let start = match self.start(&request, &conn, head).await {
            Ok(start) => {
                let m = &self.shared.metrics;
                match start {
                    Start::Replay(_) => Metrics::add(&m.replays, 1),
                    Start::Reset(crate::log::Coverage::Expired) => {
                        Metrics::add(&m.resets_expired, 1)
                    }
                    Start::Reset(_) => Metrics::add(&m.resets_unknown, 1),
                    Start::Live => {}
                }
                start
            }
            Err(err) => {
                if matches!(err, SubscribeError::Log(_)) {
                    Metrics::add(&self.shared.metrics.log_errors, 1);
                }
                self.shared.fanout.unregister(key);
                return Err(err);
            }
        };
        // Long polls answer events only: no snapshot to build and drop.
        let snapshot = match (&request.last_event_id, request.long_poll) {
            (None, false) => match crate::state::SnapshotCursor::new(&conn.selector) {
                Some(mut cursor) => {
                    let first = self.state_page(&conn.selector, &mut cursor).await;
                    Some((first.unwrap_or_default(), cursor))
                }
                None => None,
            },
            _ => None,
        };
        let waiting = match &conn.selector.user {
            Some(user) => {
                let mut waiting = self
                    .shared
                    .inboxes()
                    .waiting_for(user, &conn.selector, head);
                // A direct message at or below the id a client resumes from
                // reached it already (on another stream, or another node
                // whose word has not arrived yet); one awaiting an
                // acknowledgement comes again until it is acknowledged.
                if let Some(after) = resumed_after {
                    waiting.retain(|e| e.require_ack || e.id > after);
                }
                waiting
            }
            None => Vec::new(),
        };
        let position = match start {
            Start::Replay(ReadFrom::After(id)) => id.to_string(),
            Start::Replay(_) => String::new(),
            Start::Live => match resumed_after {
                Some(id) => id.to_string(),
                None if head.0 == 0 => String::new(),
                None => head.to_string(),
            },
            Start::Reset(_) => head.to_string(),
        };
        Ok(Ok(Opened {
            conn,
            permit,
            head,
            start,
            valid_until: identity.valid_until,
            snapshot,
            waiting,
            position,
        }))
    }

    async fn start(
        &self,
        request: &SubscribeRequest,
        conn: &Connection,
        head: EventId,
    ) -> Result<Start, SubscribeError> {
        if let Some(raw) = &request.last_event_id {
            let Some(after) = parse_last_event_id(raw) else {
                return Ok(Start::Reset(crate::log::Coverage::Unknown));
            };
            let coverage = self.shared.log.coverage(after, &conn.selector).await?;
            return Ok(match coverage.reset_reason() {
                None if after >= head => Start::Live,
                None => Start::Replay(ReadFrom::After(after)),
                Some(_) => Start::Reset(coverage),
            });
        }
        Ok(match (request.history, request.since) {
            (Some(0), None) | (None, None) => Start::Live,
            (_, Some(ms)) => Start::Replay(ReadFrom::Since(ms)),
            (Some(n), None) => Start::Replay(ReadFrom::Last(n)),
        })
    }

    pub(crate) fn state_store(&self) -> &crate::state::StateStore {
        &self.shared.state
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The Prometheus exposition of this hub's metrics (OpenMetrics text).
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.shared.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// `identity`'s user acknowledges events (SPEC §7): they stop waiting
    /// for that user. Other users' acknowledgements are their own.
    pub async fn ack(&self, identity: &Identity, ids: &[EventId]) -> Result<AckOutcome, AckError> {
        let Some(user) = identity.user.as_deref() else {
            return Err(match identity.proof {
                Proof::Anonymous => AckError::Auth(AuthError::Missing(
                    "acknowledging needs a token that names a user (`sub`)".into(),
                )),
                _ => AckError::Auth(AuthError::Forbidden(
                    "acknowledgements are per user: the token names no user (`sub`)".into(),
                )),
            });
        };
        if ids.len() > MAX_ACK_IDS {
            return Err(AckError::TooMany(ids.len()));
        }
        if self.shared.log.clustered() {
            // Every node holds the user's inbox: the acknowledgement goes
            // through the log, and this node has applied it on return.
            let acked = self.shared.inboxes().held(user, ids);
            let unknown = ids
                .iter()
                .filter(|id| !acked.contains(id))
                .copied()
                .collect();
            let record = crate::log::Control::Acked {
                user: user.to_owned(),
                ids: acked.clone(),
            };
            if !acked.is_empty() {
                self.shared
                    .log
                    .append_control(vec![record])
                    .await
                    .map_err(|e| AckError::Unavailable(e.to_string()))?;
            }
            return Ok(AckOutcome { acked, unknown });
        }
        let inboxes = self.shared.inboxes();
        let outcome = inboxes.ack(user, ids);
        inboxes.written().await.map_err(|e| {
            tracing::error!(err = %e, "could not write the inbox file");
            AckError::Store(e.to_string())
        })?;
        Ok(outcome)
    }

    /// Totals of every inbox.
    pub fn inbox_totals(&self) -> InboxTotals {
        self.shared.inboxes().totals()
    }

    /// A connection received what waited for its user: direct messages
    /// among it stop waiting (pending acknowledgements go on waiting).
    pub(crate) fn waited_events_delivered(&self, conn: &Connection, events: &[SharedEvent]) {
        let Some(user) = conn.selector.user.as_deref() else {
            return;
        };
        let ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
        if self.shared.log.clustered() {
            let record = crate::log::Control::Delivered {
                user: user.to_owned(),
                ids: ids.clone(),
            };
            let log = self.shared.log.clone();
            tokio::spawn(async move {
                if let Err(err) = log.append_control(vec![record]).await {
                    // Other nodes keep the messages: the user may get them
                    // again there (at least once, never lost).
                    tracing::warn!(%err, "could not tell the cluster that waiting messages were delivered");
                }
            });
        }
        // Written soon, not waited for: lost in a crash, the messages are
        // delivered again (at least once, never lost).
        self.shared.inboxes().delivered(user, &ids);
    }

    /// Closes one stream (it gets `retry:` and ends, so its client
    /// reconnects). False when no stream has this id.
    pub fn close_connection(&self, id: &str) -> bool {
        self.shared.fanout.close(Some(id), None) > 0
    }

    /// Closes a stream wherever it is. Clustered, one this node does not
    /// hold is passed to the others through the log (the node holding it
    /// closes it as it reads the record): `Ok(Forwarded)`.
    pub async fn close_connection_anywhere(&self, id: &str) -> Result<Closing, LogError> {
        if self.close_connection(id) {
            return Ok(Closing::Closed(1));
        }
        if !self.shared.log.clustered() {
            return Ok(Closing::Unknown);
        }
        self.forward_close(Some(id.to_owned()), None).await?;
        Ok(Closing::Forwarded(0))
    }

    /// Closes every stream of a user, on this node and, clustered, on every
    /// other (through the log): how many closed here.
    pub async fn close_user_anywhere(&self, user: &str) -> Result<Closing, LogError> {
        let here = self.close_user(user);
        if !self.shared.log.clustered() {
            return Ok(Closing::Closed(here));
        }
        self.forward_close(None, Some(user.to_owned())).await?;
        Ok(Closing::Forwarded(here))
    }

    async fn forward_close(
        &self,
        connection: Option<String>,
        user: Option<String>,
    ) -> Result<(), LogError> {
        self.shared
            .log
            .append_control(vec![crate::log::Control::Close { connection, user }])
            .await
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

    /// Adds and removes patterns of an open stream, with the same checks
    /// as subscribing: valid patterns, the connection's own token rights,
    /// `limits.max_topics_per_connection`. Events of added patterns arrive
    /// from now on (no backlog).
    pub fn resubscribe(
        &self,
        id: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<Vec<Pattern>, ResubscribeError> {
        let conn = self
            .shared
            .fanout
            .connection(id)
            .ok_or_else(|| ResubscribeError::UnknownConnection(id.to_owned()))?;
        let add = parse_patterns(add, 0)?;
        let remove = parse_patterns(remove, 0)?;
        if let Some(denied) = add.iter().find(|p| !conn.rights.allows(p)) {
            return Err(ResubscribeError::Auth(AuthError::Forbidden(format!(
                "the connection's token may not read {denied}"
            ))));
        }
        let limit = self.shared.config.limits.max_topics_per_connection;
        // The same order as `Fanout::resubscribe`: removals, then additions.
        let mut result = conn.patterns();
        result.retain(|p| !remove.contains(p));
        for p in &add {
            if !result.contains(p) {
                result.push(p.clone());
            }
        }
        let after = result.len();
        if limit != 0 && after > limit {
            return Err(SubscribeError::TooManyTopics {
                count: after,
                limit,
            }
            .into());
        }
        self.shared
            .fanout
            .resubscribe(conn.key, &add, &remove)
            .ok_or_else(|| ResubscribeError::UnknownConnection(id.to_owned()))
    }

    /// Who is on a topic or pattern (see [`Fanout::presence`]).
    pub fn presence(&self, pattern: &str) -> Result<Presence, TopicError> {
        Ok(self.shared.fanout.presence(&Pattern::parse(pattern)?))
    }

    /// Begins a graceful shutdown: new streams are refused, open ones flush,
    /// receive a jittered `retry:` and end.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// Whether the hub should get traffic: `Err` with the reason while it
    /// drains or while its store cannot be written.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_shutting_down() {
            return Err("draining".into());
        }
        self.shared.log.health()?;
        self.shared.inboxes().health()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    /// Resolves when shutdown begins.
    pub fn shutdown_started(&self) -> WaitForCancellationFutureOwned {
        self.shared.shutdown.clone().cancelled_owned()
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.shared.shutdown
    }

    /// A reconnect delay between `retry_ms` and twice that, so that clients
    /// sent away together do not come back together.
    pub fn jittered_retry_ms(&self) -> u64 {
        let base = self.shared.config.stream.retry_ms;
        base.saturating_add(fastrand::u64(0..=base))
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.shared.limiter.open()
    }

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
    fn node_stats(&self) -> NodeStats {
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
    pub async fn cluster_stats(&self) -> HubStats {
        let mut stats = self.stats();
        if !self.shared.log.clustered() {
            return stats;
        }
        let own = self.node_stats();
        let mut nodes: Vec<NodeStats> = match self.shared.log.nodes().await {
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

    /// Whether a peer may use publish and admin calls in dev mode.
    pub fn is_trusted_in_dev_mode(peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|ip| ip.to_canonical().is_loopback())
    }
}

/// Public connection ids: not sequential, so one stream's id does not give
/// away its neighbours'.
fn new_connection_id(key: u64) -> String {
    format!("c{key:x}-{:016x}", fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_mode_trusts_loopback_only() {
        for ip in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            assert!(
                Hub::is_trusted_in_dev_mode(Some(ip.parse().unwrap())),
                "{ip}"
            );
        }
        for ip in [
            "10.0.0.1",
            "192.168.1.5",
            "8.8.8.8",
            "::ffff:10.0.0.1",
            "fe80::1",
        ] {
            assert!(
                !Hub::is_trusted_in_dev_mode(Some(ip.parse().unwrap())),
                "{ip}"
            );
        }
        assert!(
            !Hub::is_trusted_in_dev_mode(None),
            "unknown peers are not trusted"
        );
    }

    #[tokio::test]
    async fn publish_from_rust_reaches_the_log() {
        let config = Config {
            memory: true,
            ..Config::default()
        };
        let hub = Hub::new(config).unwrap();
        let a = hub.publish(PublishRequest::topic("a", "x")).await.unwrap();
        let b = hub
            .publish(PublishRequest::topic("a", "y").event("e"))
            .await
            .unwrap();
        assert!(b > a);
        assert_eq!(hub.stats().head, b.to_string());
        assert!(matches!(
            hub.publish(PublishRequest::topic("bad topic", "x")).await,
            Err(PublishError::BadTopic(..))
        ));
    }

    /// A log that answers appends at once and hands events to fan-out only
    /// when the test says so: the window between a publisher's answer and
    /// the dispatch, held open.
    struct HeldLog {
        inner: std::sync::Mutex<crate::log::memory::Inner>,
        sink: std::sync::OnceLock<Arc<dyn crate::log::CommitSink>>,
        held: std::sync::Mutex<Vec<SharedEvent>>,
    }

    impl HeldLog {
        /// A hub on a new held log.
        fn hub() -> (Hub, Arc<HeldLog>) {
            let settings = history_settings(&Config::default());
            let log = Arc::new(HeldLog {
                inner: std::sync::Mutex::new(crate::log::memory::Inner::new(settings, 1)),
                sink: std::sync::OnceLock::new(),
                held: std::sync::Mutex::new(Vec::new()),
            });
            let config = Config {
                memory: true,
                ..Config::default()
            };
            (Hub::with_log(config, log.clone()).unwrap(), log)
        }

        /// `first` published and dispatched, `held` answered and readable
        /// but not dispatched, and a request resuming from `held`, as a
        /// client that got it (on another stream, another node) sends.
        async fn resuming_from_held() -> (Hub, Arc<HeldLog>, EventId, EventId, SubscribeRequest) {
            let (hub, log) = HeldLog::hub();
            let first = hub.publish(PublishRequest::topic("t", "first")).await;
            log.release();
            let held = hub.publish(PublishRequest::topic("t", "held")).await;
            let (first, held) = (first.unwrap(), held.unwrap());
            let request = SubscribeRequest {
                topics: vec!["t".into()],
                last_event_id: Some(held.to_string()),
                ..Default::default()
            };
            (hub, log, first, held, request)
        }

        fn release(&self) {
            let events = std::mem::take(&mut *self.held.lock().unwrap());
            self.sink.get().unwrap().committed(&events);
        }
    }

    #[async_trait::async_trait]
    impl EventLog for HeldLog {
        fn attach(&self, sink: Arc<dyn crate::log::CommitSink>) -> EventId {
            let _ = self.sink.set(sink);
            EventId(self.inner.lock().unwrap().head())
        }

        async fn append(
            &self,
            drafts: Vec<crate::event::EventDraft>,
        ) -> Result<Vec<crate::log::Appended>, LogError> {
            let mut inner = self.inner.lock().unwrap();
            let (appended, events) = inner.prepare(drafts);
            inner.apply(&events);
            self.held.lock().unwrap().extend(events);
            Ok(appended)
        }

        async fn read(
            &self,
            request: crate::log::ReadRequest<'_>,
        ) -> Result<crate::log::Page, LogError> {
            Ok(self
                .inner
                .lock()
                .unwrap()
                .read(&request, crate::log::now_ms()))
        }

        async fn coverage(
            &self,
            after: EventId,
            selector: &Selector,
        ) -> Result<crate::log::Coverage, LogError> {
            Ok(self.inner.lock().unwrap().coverage(after, selector))
        }

        fn kind(&self) -> &'static str {
            "held"
        }
    }

    #[tokio::test]
    async fn a_stream_resuming_from_an_id_not_yet_dispatched_never_gets_it_again() {
        use futures_util::StreamExt;
        let (hub, log, first, held, request) = HeldLog::resuming_from_held().await;
        let Subscription::Stream { mut body, .. } = hub.subscribe(request).await.unwrap() else {
            panic!("refused");
        };
        log.release();
        let next = hub
            .publish(PublishRequest::topic("t", "next"))
            .await
            .unwrap();
        log.release();
        let mut text = String::new();
        while !text.contains(&format!("id: {next}")) {
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
                .await
                .expect("the next event arrives")
                .expect("the stream goes on");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert!(!text.contains("data: held"), "{text}");
        assert!(!text.contains("data: first"), "{text}");
        assert!(first < held && held < next);
    }

    #[tokio::test]
    async fn a_poll_resuming_from_an_id_not_yet_dispatched_never_gets_it_again() {
        let (hub, log, _, held, request) = HeldLog::resuming_from_held().await;
        let releaser = {
            let log = log.clone();
            let hub = hub.clone();
            tokio::spawn(async move {
                // The poll is waiting once its connection is registered.
                while hub.fanout().stats().connections == 0 {
                    tokio::task::yield_now().await;
                }
                log.release();
                hub.publish(PublishRequest::topic("t", "next"))
                    .await
                    .unwrap();
                log.release();
            })
        };
        let answer = hub
            .poll(request, Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        releaser.await.unwrap();
        let data: Vec<&str> = answer.events.iter().map(|e| &*e.data).collect();
        assert!(!data.contains(&"held"), "{data:?}");
        assert!(answer.last_event_id >= held, "the position never goes back");
    }
}
