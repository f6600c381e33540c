//! The hub: one cheap-to-clone handle over everything a running Herald
//! shares — configuration, the log, fan-out, limits and the shutdown signal.
//!
//! This file holds the handle, what it shares and the publish path
//! (validate → rights → [`EventLog::append`]; the log's committer hands
//! each committed group to [`Fanout`], which queues it on the connections).
//! The rest of the hub's work lives beside it, one job per file:
//!
//! - `build`: building a hub: the log, the inbox, fan-out, limits;
//! - `open`: opening a stream or a long poll, changing its subscriptions;
//! - `poll`: answering a long poll;
//! - `state`: retained state, through [`crate::delivery::state::StateHost`];
//! - `acks`: acknowledgements and what waited for a user;
//! - `admin`: numbers, users, presence, closing streams;
//! - `tasks`: the background work and how it stops.

use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::access::auth::{AuthError, Authenticator, Identity, Proof};
use crate::access::limits::ConnectionLimiter;
use crate::access::rate::RateLimits;
use crate::config::Config;
use crate::delivery::fanout::Fanout;
use crate::delivery::inbox::Inboxes;
use crate::log::EventLog;
use crate::metrics::Metrics;
use crate::requests::publish::{check_rights, validate_batch, PublishError, PublishRequest};
use crate::values::event::EventId;

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
    state: crate::delivery::state::StateStore,
    /// Cancelled when the hub starts shutting down: streams flush, send a
    /// jittered `retry:` and end; new streams are refused for now.
    shutdown: CancellationToken,
    next_key: AtomicU64,
    /// Clustered: this node's name.
    node: Option<String>,
    tasks: tasks::Tasks,
}

impl Shared {
    fn inboxes(&self) -> &Arc<Inboxes> {
        self.fanout.inboxes().expect("a hub's fan-out has inboxes")
    }
}

impl Hub {
    /// The settings this hub runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The event log this hub writes to and reads from.
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.shared.log
    }

    pub(crate) fn fanout(&self) -> &Arc<Fanout> {
        &self.shared.fanout
    }

    /// True when no auth key is configured (SPEC §1 dev mode).
    pub(crate) fn dev_mode(&self) -> bool {
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

    pub(crate) fn rates(&self) -> &RateLimits {
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

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The Prometheus exposition of this hub's metrics (OpenMetrics text).
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.shared.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Begins a graceful shutdown: new streams are refused, open ones flush,
    /// receive a jittered `retry:` and end.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
        // Streams wait in their connections, not on the token: each is
        // woken, sees the shutdown and ends. One that registers after this
        // sees it before it first waits.
        self.shared.fanout.wake_all();
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

    /// Whether a shutdown has begun (streams are closing, publishes refused).
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    /// Resolves when shutdown begins.
    pub(crate) fn shutdown_started(&self) -> WaitForCancellationFutureOwned {
        self.shared.shutdown.clone().cancelled_owned()
    }

    /// A reconnect delay between `retry_ms` and twice that, so that clients
    /// sent away together do not come back together.
    pub(crate) fn jittered_retry_ms(&self) -> u64 {
        let base = self.shared.config.stream.retry_ms;
        base.saturating_add(fastrand::u64(0..=base))
    }

    /// Streams open now.
    pub(crate) fn open_streams(&self) -> usize {
        self.shared.limiter.open()
    }

    /// Whether a peer may use publish and admin calls in dev mode.
    pub(crate) fn is_trusted_in_dev_mode(peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|ip| ip.to_canonical().is_loopback())
    }
}

mod acks;
mod admin;
mod build;
mod open;
mod poll;
mod state;
mod tasks;

pub use acks::AckError;
pub(crate) use admin::Closing;
pub use admin::{ClusterStats, HubStats, NodeStats, NodeTotals, UserInfo};
pub use build::StartError;
pub(crate) use open::Opening;
pub use open::{ResubscribeError, Subscription};

#[cfg(test)]
mod tests;
