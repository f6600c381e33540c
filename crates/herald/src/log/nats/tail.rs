//! Tailing the stream: each node reads it with an ordered consumer from
//! the sequence after the last one it applied, and applies what it reads
//! to its replica, starting over with backoff after errors.

use std::sync::{Arc, Mutex};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::codec::Decoder;
use super::{lock, NODE_HEADER};
use crate::log::engine::{Backoff, Status};
use crate::log::replica::Replica;

pub(super) fn unix_ms(t: time::OffsetDateTime) -> u64 {
    (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64
}

/// A message of the stream, however it was read.
pub(super) struct Raw {
    pub(super) seq: u64,
    pub(super) subject: String,
    pub(super) published_ms: u64,
    pub(super) from: Option<String>,
    pub(super) payload: bytes::Bytes,
}

impl Raw {
    pub(super) fn consumed(message: jetstream::Message) -> Result<Raw, String> {
        let info = message.info().map_err(|e| e.to_string())?;
        let (seq, published_ms) = (info.stream_sequence, unix_ms(info.published));
        let from = message
            .headers
            .as_ref()
            .and_then(|h| h.get(NODE_HEADER))
            .map(|v| v.as_str().to_owned());
        Ok(Raw {
            seq,
            subject: message.subject.to_string(),
            published_ms,
            from,
            payload: message.payload.clone(),
        })
    }

    pub(super) fn stored(message: jetstream::message::StreamMessage) -> Raw {
        Raw {
            seq: message.sequence,
            from: message
                .headers
                .get(NODE_HEADER)
                .map(|v| v.as_str().to_owned()),
            subject: message.subject.to_string(),
            published_ms: unix_ms(message.time),
            payload: message.payload,
        }
    }
}

/// The stored messages between `after` and `before` (exclusive), read by
/// sequence.
pub(super) async fn stored_between(
    stream: &stream::Stream,
    filter: &str,
    after: u64,
    before: u64,
) -> Result<Vec<Raw>, String> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let mut out = Vec::new();
    let mut next = after + 1;
    while next < before {
        match stream.get_first_raw_message_by_subject(filter, next).await {
            Ok(m) if m.sequence < before => {
                next = m.sequence + 1;
                out.push(Raw::stored(m));
            }
            Ok(_) => break,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(out)
}

/// A page the consumer delivered, with what it skipped put back. A purge
/// or roll-up on one subject moves every consumer of the stream past the
/// messages it has not delivered yet, whatever their subject (nats-server
/// 2.9): those are still stored, and are read here by sequence. A gap
/// that holds nothing was a message removed before it was read.
pub(super) async fn complete(
    js: &jetstream::Context,
    name: &str,
    filter: &str,
    mut prev: u64,
    page: Vec<Raw>,
) -> Result<Vec<Raw>, String> {
    let mut out = Vec::with_capacity(page.len());
    let mut stream = None;
    for raw in page {
        if raw.seq <= prev {
            continue;
        }
        if raw.seq > prev + 1 {
            if stream.is_none() {
                stream = Some(js.get_stream(name).await.map_err(|e| e.to_string())?);
            }
            let stream = stream.as_ref().expect("just got");
            out.extend(stored_between(stream, filter, prev, raw.seq).await?);
        }
        prev = raw.seq;
        out.push(raw);
    }
    Ok(out)
}

/// Applies messages of the log, in order: to the replica, then to the
/// sequence publishers wait on.
pub(super) fn apply(
    decoder: &Mutex<Decoder>,
    replica: &Replica,
    applied: &watch::Sender<u64>,
    messages: Vec<Raw>,
    loading: bool,
) {
    let mut entries = Vec::new();
    let mut last = None;
    let floor;
    {
        let mut decoder = lock(decoder);
        for message in &messages {
            let seq = message.seq;
            if seq <= decoder.last_seq {
                continue; // read again after a reconnect
            }
            match decoder.decode(
                seq,
                message.published_ms,
                &message.subject,
                message.from.as_deref(),
                &message.payload,
            ) {
                Ok(decoded) => entries.extend(decoded),
                // One bad message must not stop every node (no writer of
                // this version makes them): skipped and said.
                Err(err) => {
                    crate::log::skipped_unreadable();
                    tracing::error!(
                        seq,
                        subject = %message.subject,
                        %err,
                        "a message in the engine is unreadable; skipped"
                    )
                }
            }
            last = Some(seq);
        }
        floor = decoder.new_floor.take();
    }
    if let (Some(floor), true) = (floor, loading) {
        replica.lost_through(floor);
    }
    if loading {
        replica.load(entries);
    } else {
        replica.deliver(entries);
        if let Some(floor) = floor {
            replica.lost_through(floor);
        }
    }
    if let Some(seq) = last {
        applied.send_replace(seq);
    }
}

/// Bytes of messages a pull may ask for at once. nats-server cuts off a
/// client with more than 64 MiB waiting to be read (a "slow consumer"),
/// and the ordered consumer asks for 500 messages a pull: batches of 1,000
/// events make messages of a few hundred KiB, and a node reading such a
/// log back could never finish.
const PULL_BYTES: usize = 16 << 20;

/// Messages per pull, so that a pull of the largest messages the server
/// takes stays within [`PULL_BYTES`].
fn pull_batch(max_payload: usize) -> i64 {
    (PULL_BYTES / max_payload.max(1)).clamp(1, 500) as i64
}

/// An ordered consumer of the whole stream from `start`.
pub(super) async fn consumer_from(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    start: u64,
) -> Result<consumer::pull::Ordered, String> {
    let stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start.max(1),
            },
            filter_subject: filter.to_owned(),
            max_batch: pull_batch(js.client().server_info().max_payload),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    consumer.messages().await.map_err(|e| e.to_string())
}

/// What the tail task shares with the log.
pub(super) struct Tail {
    pub(super) js: jetstream::Context,
    pub(super) url: String,
    pub(super) stream: String,
    /// Every subject of the stream, `{name}.>`.
    pub(super) filter: String,
    pub(super) decoder: Arc<Mutex<Decoder>>,
    pub(super) replica: Arc<Replica>,
    pub(super) applied: Arc<watch::Sender<u64>>,
    pub(super) status: Arc<Status>,
    pub(super) reconnected: Arc<tokio::sync::Notify>,
    pub(super) stop: CancellationToken,
}

/// Reads the stream from the last applied sequence on, for as long as the
/// log lives, starting over with backoff after errors.
pub(super) async fn tail(tail: Tail) {
    let Tail {
        js,
        url,
        stream,
        filter,
        decoder,
        replica,
        applied,
        status,
        reconnected,
        stop,
    } = tail;
    let mut backoff = Backoff::new();
    loop {
        let from = lock(&decoder).last_seq + 1;
        let started = tokio::select! {
            _ = stop.cancelled() => return,
            c = consumer_from(&js, &stream, &filter, from) => c,
        };
        let mut messages = match started {
            Ok(messages) => messages.ready_chunks(1000),
            Err(err) => {
                status.tail_lost(&url, &err);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = backoff.wait() => {}
                }
                continue;
            }
        };
        status.tail_ok(&url, replica.head());
        backoff.reset();
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                _ = reconnected.notified() => break,
                n = messages.next() => n,
            };
            let Some(chunk) = next else { break };
            let mut page = Vec::with_capacity(chunk.len());
            let mut failed = None;
            for item in chunk {
                match item.map_err(|e| e.to_string()).and_then(Raw::consumed) {
                    Ok(message) => page.push(message),
                    Err(err) => {
                        failed = Some(err);
                        break;
                    }
                }
            }
            let prev = *applied.borrow();
            let page = match complete(&js, &stream, &filter, prev, page).await {
                Ok(page) => page,
                Err(err) => {
                    status.tail_lost(&url, &err);
                    break;
                }
            };
            apply(&decoder, &replica, &applied, page, false);
            if let Some(err) = failed {
                status.tail_lost(&url, &err);
                break;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = backoff.wait() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_of_the_largest_messages_stays_far_below_the_servers_cut_off() {
        for max_payload in [1 << 10, 1 << 20, 8 << 20, 64 << 20] {
            let batch = pull_batch(max_payload);
            assert!((1..=500).contains(&batch), "{max_payload}: {batch}");
            let bytes = batch as usize * max_payload;
            assert!(
                bytes <= PULL_BYTES.max(max_payload) && bytes < 64 << 20 || batch == 1,
                "{max_payload}: {batch} messages, {bytes} bytes"
            );
        }
        assert_eq!(pull_batch(1 << 20), 16, "nats-server's default max_payload");
        assert_eq!(
            pull_batch(1 << 10),
            500,
            "small messages: the default batch"
        );
    }
}
