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
//! 1. `http/publish.rs` — parses the request; `publish.rs` validates it
//!    into an [`EventDraft`].
//! 2. `log/` — [`EventLog::append`] gives it an id and stores it (the seam
//!    every store implements), then hands committed events, in id order, to
//!    fan-out. `event.rs` encodes each event to SSE bytes once, here.
//! 3. `fanout.rs` — finds the receiving connections through `index.rs` (a
//!    trie of patterns), checks each with its `selector.rs`, and pushes a
//!    shared handle into each `connection.rs` queue (bounded; overflow
//!    policy applies).
//! 4. `stream.rs` — each connection's writer wakes, takes everything
//!    waiting, and writes it in one chunk to the socket (`server.rs`).
//!
//! Subscribing runs `http/events.rs` → `subscribe.rs` → `hub/open.rs`, which
//! registers the connection with fan-out before reading any backlog: see
//! `stream.rs` for why that makes resume exactly once.

// Whatever is `pub` is reachable from outside the crate: the rest says
// `pub(crate)`, so a reader sees which items make the public API.
#![warn(unreachable_pub)]

pub mod auth;
mod blocking;
pub mod config;
pub mod connection;
pub mod event;
pub mod fanout;
#[cfg(feature = "fuzzing")]
pub mod fuzz;
mod handoff;
pub mod http;
pub mod hub;
mod id;
pub mod inbox;
pub mod index;
pub mod json;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod pattern;
pub mod poll;
pub mod publish;
pub mod rate;
mod schema;
pub mod selector;
pub mod server;
pub mod sse;
pub mod state;
pub mod stream;
pub mod subscribe;
pub mod topic;

pub use auth::{AuthError, Identity};
pub use config::{Config, Overflow};
pub use event::{Event, EventDraft, EventId};
pub use hub::{Hub, StartError, Subscription};
pub use log::{EventLog, MemoryLog};
pub use pattern::Pattern;
pub use publish::{PublishError, PublishRequest};
pub use server::{shutdown_signal, Server};
pub use subscribe::SubscribeRequest;
pub use topic::Topic;

impl Hub {
    /// The HTTP API of this hub (see [`http::router`]).
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }
}

/// Compiles the Rust code blocks of `docs/AUTH.md` (the token-minting
/// snippet) as doctests, so the documentation cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/AUTH.md")]
pub struct AuthDocSnippets;
