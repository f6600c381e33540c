//! Building a hub: the log its configuration asks for, and everything
//! around it.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::tasks::{Handoffs, Tasks};
use super::{Hub, Shared};
use crate::access::auth::Authenticator;
use crate::access::limits::ConnectionLimiter;
use crate::access::rate::RateLimits;
use crate::config::{Config, ConfigError};
use crate::delivery::courier::Courier;
use crate::delivery::fanout::Fanout;
use crate::delivery::handoff::{LiveDeliveries, PresenceChanges};
use crate::delivery::inbox::Inboxes;
use crate::log::memory::MemoryLogSettings;
use crate::log::{DurableLog, EventLog, MemoryLog};
use crate::metrics::Metrics;
use crate::values::pattern::Pattern;

/// Why a hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting cannot work as given.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be opened.
    #[error(transparent)]
    Store(#[from] crate::log::durable::OpenError),
    /// The cluster engine could not be reached or read.
    #[error(transparent)]
    Cluster(#[from] crate::log::engine::ConnectError),
    /// `Hub::new` was given a `cluster.url`.
    #[error("cluster.url is set: a clustered hub is started with Hub::connect, which reaches the engine first")]
    NeedsConnect,
}

/// The shared log on the engine `url` names, through the client this build
/// holds (`Config::validate` refuses an engine it does not).
async fn engine_log(
    url: &str,
    settings: MemoryLogSettings,
    options: crate::log::engine::ClusterOptions,
) -> Result<Arc<dyn EventLog>, StartError> {
    #[cfg(feature = "nats")]
    if url.starts_with("nats://") {
        return Ok(Arc::new(
            crate::log::nats::NatsLog::connect(url, settings, options).await?,
        ));
    }
    #[cfg(feature = "redis")]
    if url.starts_with("redis://") {
        return Ok(Arc::new(
            crate::log::redis::RedisLog::connect(url, settings, options).await?,
        ));
    }
    let _ = (settings, options);
    Err(StartError::Config(ConfigError {
        setting: "cluster.url".into(),
        reason: format!("this build of Herald has no client for {url:?}"),
    }))
}

/// The history retention `[history]` asks for.
pub(super) fn history_settings(config: &Config) -> MemoryLogSettings {
    let h = &config.history;
    MemoryLogSettings {
        max_events_per_topic: h.max_events_per_topic,
        max_age: (h.max_age_secs != 0).then(|| Duration::from_secs(h.max_age_secs)),
        idempotency_window: Duration::from_secs(h.idempotency_window_secs),
        max_idempotency_keys: h.max_idempotency_keys,
        max_bytes: h.max_bytes,
        max_topics: h.max_topics,
        hot_bytes: h.hot_bytes,
    }
}

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
            data_dir: (!config.memory).then(|| config.data_dir.clone()),
        };
        tracing::info!(node = options.node, "this node's name in the cluster");
        let settings = history_settings(&config);
        let log = engine_log(&url, settings, options).await?;
        Ok(Hub::with_log(config, log)?)
    }

    /// A hub on any implementation of the log seam.
    pub fn with_log(config: Config, log: Arc<dyn EventLog>) -> Result<Hub, ConfigError> {
        config.validate()?;
        let auth = Authenticator::from_config(&config.auth).map_err(|e| ConfigError {
            setting: e.source_name,
            reason: e.reason,
        })?;
        let inbox_settings = crate::delivery::inbox::InboxSettings {
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
        let runtime = tokio::runtime::Handle::try_current().ok();
        let mut fanout = Fanout::with_inboxes(Arc::new(inboxes)).with_courier(Courier::new(
            runtime.as_ref().map_or(1, |rt| rt.metrics().num_workers()),
        ));
        let mut handoffs = Handoffs::default();
        if !config.presence.topics.is_empty() {
            match &runtime {
                Some(_) => {
                    let patterns = config
                        .presence
                        .topics
                        .iter()
                        .filter_map(|p| Pattern::parse(p).ok())
                        .collect();
                    let changes = Arc::new(PresenceChanges::default());
                    fanout = fanout.announce_presence(patterns, changes.clone());
                    handoffs.presence = Some(changes);
                }
                None => tracing::warn!(
                    "presence.topics is set but the hub was built outside a tokio runtime: no presence events"
                ),
            }
        }
        if log.clustered() && runtime.is_some() {
            let reports = Arc::new(LiveDeliveries::default());
            fanout = fanout.report_live_deliveries(reports.clone());
            handoffs.live_deliveries = Some(reports);
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
        let state =
            crate::delivery::state::StateStore::open(state_file).map_err(|e| ConfigError {
                setting: "data_dir".into(),
                reason: format!("cannot read the state file: {e}"),
            })?;
        let node = log.cluster().map(|c| c.node().to_owned());
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
                tasks: Tasks::new(),
            }),
        };
        if let Some(rt) = &runtime {
            Tasks::start(&hub.shared, rt, handoffs);
        }
        Ok(hub)
    }
}
