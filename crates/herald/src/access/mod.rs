//! Who may do what, and how much: credentials and rights (`auth/`), caps on
//! connections and subscriptions (`limits.rs`), per-caller rate limits
//! (`rate.rs`).

pub(crate) mod auth;
pub(crate) mod limits;
pub(crate) mod rate;
