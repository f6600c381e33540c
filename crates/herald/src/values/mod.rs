//! The values everything else is made of: topics and patterns, event ids,
//! drafts and committed events with their SSE bytes, and the selector that
//! says who a connection is and what it reads. Nothing here does I/O or
//! knows about the log, a connection or the hub.

pub(crate) mod event;
pub(crate) mod id;
pub(crate) mod json;
pub(crate) mod pattern;
pub(crate) mod schema;
pub(crate) mod selector;
pub(crate) mod sse;
pub(crate) mod topic;
