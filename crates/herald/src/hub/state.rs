//! Retained state (SPEC §6) on the hub: the store lives in
//! [`crate::delivery::state`]; the hub gives it the log, the head and a guarded
//! publish ([`StateHost`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use super::Hub;
use crate::access::auth::Identity;
use crate::config::StateConfig;
use crate::delivery::state::{
    Change, Changed, Entry, Guarded, IfMatch, SnapshotCursor, StateError, StateHost,
};
use crate::log::{EventLog, StateGuard};
use crate::metrics::Metrics;
use crate::requests::publish::{check_rights, validate_batch, PublishError, PublishRequest};
use crate::values::event::EventId;
use crate::values::selector::Selector;

#[async_trait::async_trait]
impl StateHost for Hub {
    fn log(&self) -> &Arc<dyn EventLog> {
        &self.shared.log
    }

    fn head(&self) -> EventId {
        self.shared.fanout.head()
    }

    fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    fn state_limits(&self) -> &StateConfig {
        &self.shared.config.state
    }

    async fn publish_guarded(
        &self,
        identity: &Identity,
        request: PublishRequest,
        guard: StateGuard,
    ) -> Result<Guarded, PublishError> {
        let mut drafts = validate_batch(vec![request], &self.shared.config.limits)?;
        check_rights(identity, &drafts[0]).map_err(PublishError::Auth)?;
        // The one way a `state` event enters the log (publishers may not
        // name it: see `publish::STATE_EVENT`).
        drafts[0].event_type = Some(crate::requests::publish::STATE_EVENT.into());
        match self
            .shared
            .log
            .append_guarded(drafts.remove(0), guard)
            .await
        {
            Ok(Ok(appended)) => {
                Metrics::add(&self.shared.metrics.published, 1);
                Ok(Guarded::Published(appended.id))
            }
            Ok(Err(conflict)) => Ok(Guarded::Conflict(conflict)),
            Err(err) => {
                Metrics::add(&self.shared.metrics.log_errors, 1);
                Err(err.into())
            }
        }
    }
}

impl Hub {
    /// Changes one value, publishing its `state` event (SPEC §6). Needs the
    /// right to publish on the topic.
    pub async fn change_state(
        &self,
        identity: &Identity,
        topic: &str,
        key: &str,
        change: Change,
        if_match: Option<IfMatch>,
    ) -> Result<Changed, StateError> {
        self.shared
            .state
            .change(self, identity, topic, key, change, if_match)
            .await
    }

    /// Every key of a topic. Needs the right to read the topic. In a
    /// cluster, the node first catches up with the engine, so the values
    /// include every change acknowledged on any node before the call.
    pub async fn read_state(
        &self,
        identity: &Identity,
        topic: &str,
    ) -> Result<BTreeMap<String, Entry>, StateError> {
        self.shared.state.read(self, identity, topic, true).await
    }

    /// [`Hub::read_state`] without catching up with the engine: for a
    /// second read in the request of one that did.
    pub(crate) async fn read_state_held(
        &self,
        identity: &Identity,
        topic: &str,
    ) -> Result<BTreeMap<String, Entry>, StateError> {
        self.shared.state.read(self, identity, topic, false).await
    }

    /// The next page of a fresh stream's state snapshot (see
    /// [`crate::delivery::state::StateStore::page`]).
    pub(crate) async fn state_page(
        &self,
        selector: &Selector,
        cursor: &mut SnapshotCursor,
    ) -> Option<Bytes> {
        self.shared
            .state
            .page(self, selector, cursor, crate::delivery::stream::CHUNK_BYTES)
            .await
    }
}
