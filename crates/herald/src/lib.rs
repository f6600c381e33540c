//! Herald: a real-time push hub on Server-Sent Events.
//!
//! Publishers post events to topics; subscribers hold one SSE stream for
//! many topics and patterns and resume exactly once with Last-Event-ID.
//! This crate is the whole hub as a library: embed it in an axum
//! application with [`Hub::router`], publish from Rust with
//! [`Hub::publish`], or run it with [`Server`] (what `herald serve` does).
//!
//! # The hot path, top to bottom
//!
//! 1. `http/publish.rs` — parses the request; `requests/publish.rs`
//!    validates it into an [`EventDraft`].
//! 2. `log/` — [`EventLog::append`] gives it an id and stores it (the seam
//!    every store implements), then hands committed events, in id order, to
//!    fan-out. `values/event.rs` encodes each event to SSE bytes once, here.
//! 3. `delivery/fanout.rs` — finds the receiving connections through
//!    `delivery/index.rs` (a trie of patterns), checks each with its
//!    selector, and pushes a shared handle into each `delivery/connection.rs`
//!    queue (bounded; overflow policy applies).
//! 4. `delivery/stream.rs` — each connection's writer wakes, takes
//!    everything waiting, and writes it in one chunk to the socket
//!    (`server/sse_socket.rs`).
//!
//! Subscribing runs `http/events.rs` → `requests/subscribe.rs` →
//! `hub/open.rs`, which registers the connection with fan-out before
//! reading any backlog: see `delivery/stream.rs` for why that makes resume
//! exactly once. docs/ARCHITECTURE.md draws the layers.

// Whatever is `pub` is reachable from outside the crate, and documented:
// the rest says `pub(crate)`, so a reader sees which items make the public
// API.
#![warn(unreachable_pub, missing_docs)]

// The folders are the layers, bottom first (docs/ARCHITECTURE.md;
// tests/layers.rs keeps each module to the ones below it). Modules are
// private: the public API is what this file re-exports, plus `config` (every
// setting) and `log` (the seam a store implements).
mod access;
mod blocking;
pub mod config;
mod delivery;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod hangup;
mod http;
mod hub;
pub mod log;
mod metrics;
mod requests;
mod server;
mod values;

pub use access::auth::{AuthError, Identity, Proof, Rights};
pub use config::{Config, Overflow};
pub use delivery::fanout::{FanoutStats, Presence};
pub use delivery::inbox::{AckOutcome, InboxTotals, UserInboxCounts};
pub use delivery::poll::{PollAnswer, Polled};
pub use delivery::stream::EventBody;
pub use hangup::Hangup;
pub use hub::{
    AckError, ClusterStats, Hub, HubStats, NodeStats, NodeTotals, ResubscribeError, StartError,
    Subscription, UserInfo,
};
pub use log::{EventLog, MemoryLog};
pub use requests::publish::{PublishError, PublishRequest, PublishTo};
pub use requests::subscribe::{Refusal, SubscribeError, SubscribeRequest};
pub use server::{shutdown_signal, Server};
pub use values::event::{Event, EventDraft, EventId, Target};
pub use values::pattern::Pattern;
pub use values::selector::Selector;
pub use values::topic::{Topic, TopicError};

/// Retained state (SPEC §6): what [`Hub::change_state`] takes and answers,
/// and what [`Hub::read_state`] reads.
pub mod state {
    pub use crate::delivery::state::{Change, Changed, Entry, IfMatch, StateError};
}

impl Hub {
    /// The HTTP API of this hub (SPEC §3–§9, `GET /v1/openapi.json`), to
    /// serve or to nest in an axum application.
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }
}

/// Compiles the Rust code blocks of `docs/AUTH.md` (the token-minting
/// snippet) as doctests, so the documentation cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/AUTH.md")]
pub struct AuthDocSnippets;
