//! Event ids: positions in the hub's one ordered log.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The position of an event in the hub's one ordered log.
///
/// Ids are assigned by the log, strictly increasing over *all* topics, so a
/// connection subscribed to many topics and patterns resumes with a single
/// Last-Event-ID: "everything that matches me after this id". On the wire
/// they are decimal strings.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct EventId(pub u64);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for EventId {
    type Err = ();
    /// Only plain decimal digits: anything else is not an id this hub issued.
    fn from_str(s: &str) -> Result<Self, ()> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(());
        }
        s.parse().map(EventId).map_err(|_| ())
    }
}
