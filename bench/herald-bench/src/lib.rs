//! herald-bench: a load generator for Herald and the SSE servers it is
//! measured against. Raw HTTP/1.1 and SSE parsing on tokio, so that the
//! generator is never what limits a run; URLs are templates with `{topic}`,
//! so one generator drives every peer the same way.
//!
//! Modes: `idle` (memory per idle connection), `fanout` (a fixed publish
//! rate to many subscribers: deliveries, loss, duplicates, latency, CPU),
//! `ramp` (the highest rate with p99 under a bound and nothing lost),
//! `publish` (publish throughput and latency), `connects` (a connect flood)
//! and `resume` (everyone
//! reconnects at once with Last-Event-ID). Each prints a summary and,
//! last, one line of JSON with every figure.

pub mod load;
pub mod procfs;
pub mod resume;
pub mod swarm;
pub mod wire;

pub use load::{idle, publish, IdleRun, PublishRun};
pub use resume::{resume_storm, ResumeRun};
pub use swarm::{Latency, Phase, Swarm, Target};
