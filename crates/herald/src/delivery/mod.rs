//! From a committed event to a subscriber's socket, bottom first: what waits
//! for users who are away (`inbox.rs`), a stream's socket as the server's
//! socket path shares it (`outlet.rs`), a connection's bounded queue
//! (`connection.rs`), the pattern trie (`index.rs`), fan-out's hand-overs to
//! the hub's tasks (`handoff.rs`), the courier that writes for idle streams
//! (`courier.rs`), fan-out itself (`fanout.rs`), retained
//! state a late joiner reads first (`state.rs`), and the two ways out: a
//! stream's writer (`stream.rs`) and a long poll's answer (`poll.rs`).
//! `tests/layers.rs` keeps that order: a module uses only those before it.

pub(crate) mod connection;
pub(crate) mod courier;
pub(crate) mod fanout;
pub(crate) mod handoff;
pub(crate) mod inbox;
pub(crate) mod index;
pub(crate) mod outlet;
pub(crate) mod poll;
pub(crate) mod state;
pub(crate) mod stream;
