//! Acknowledgements and what waited for a user (SPEC §7).

use crate::access::auth::{AuthError, Identity, Proof};
use crate::delivery::connection::Connection;
use crate::delivery::inbox::AckOutcome;
use crate::values::event::{EventId, SharedEvent};

use super::Hub;

/// Most ids one acknowledgement may name.
pub(super) const MAX_ACK_IDS: usize = 1000;

/// Why an acknowledgement was refused.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    /// The caller may not acknowledge (no user, or a bad token).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// More ids than one acknowledgement may name.
    #[error("an acknowledgement names at most {MAX_ACK_IDS} ids; got {0}")]
    TooMany(usize),
    /// The inbox file could not be written.
    #[error("the inbox store failed: {0}")]
    Store(String),
    /// Clustered: the engine could not take the acknowledgement.
    #[error("acknowledgements cannot be recorded now: {0}")]
    Unavailable(String),
}

impl Hub {
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
        if let Some(cluster) = self.shared.log.cluster() {
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
                cluster
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
                let Some(cluster) = log.cluster() else { return };
                if let Err(err) = cluster.append_control(vec![record]).await {
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
}
