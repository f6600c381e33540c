//! Tailing the stream: each node reads it from the last id it applied and
//! hands what it reads to its replica, reconnecting with backoff.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Value};
use tokio_util::sync::CancellationToken;

use super::codec::{decode_entries, stream_id, trimmed_from_info, Keys};
use super::{connection_lost, BLOCK_MS, PAGE};
use crate::log::engine::{Backoff, Status};
use crate::log::replica::Replica;

pub(super) fn tail_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_millis(BLOCK_MS + 3000)))
}

/// The highest id trimmed from the stream (0: none, or no stream yet).
pub(super) async fn trimmed_through(
    conn: &mut MultiplexedConnection,
    key: &str,
) -> Result<u64, RedisError> {
    let info: Value = match redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query_async(conn)
        .await
    {
        Ok(info) => info,
        // No such key: nothing appended yet.
        Err(err) if !connection_lost(&err) => return Ok(0),
        Err(err) => return Err(err),
    };
    Ok(trimmed_from_info(info))
}

/// Reads the stream from the replica's head on, for as long as the log
/// lives, reconnecting with backoff.
pub(super) async fn tail(
    client: Client,
    url: String,
    keys: Arc<Keys>,
    replica: Arc<Replica>,
    status: Arc<Status>,
    writer: Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>,
    stop: CancellationToken,
) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut backoff = Backoff::new();
    loop {
        if conn.is_none() {
            let connected = async {
                let mut c = client
                    .get_multiplexed_async_connection_with_config(&tail_config())
                    .await?;
                let floor = trimmed_through(&mut c, &keys.log).await?;
                Ok::<_, RedisError>((c, floor))
            };
            let connected = tokio::select! {
                _ = stop.cancelled() => return,
                c = connected => c,
            };
            match connected {
                Ok((c, floor)) => {
                    if floor > replica.head() {
                        tracing::error!(
                            floor,
                            head = replica.head(),
                            "events were trimmed from the cluster log before this node read them; \
                             resuming across them gives herald.reset"
                        );
                        replica.lost_through(floor);
                    }
                    conn = Some(c);
                }
                Err(err) => {
                    status.tail_lost(&url, &err.to_string());
                    status.connection(false);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = backoff.wait() => {}
                    }
                    status.count_reconnect();
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        let mut xread = redis::cmd("XREAD");
        xread
            .arg("COUNT")
            .arg(PAGE)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(&keys.log)
            .arg(stream_id(replica.head()));
        let read = xread.query_async::<Value>(c);
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            r = read => r,
        };
        match read {
            Ok(reply) => {
                backoff.reset();
                status.tail_ok(&url, replica.head());
                status.connection(true);
                // `[[key, entries]]`, or nil when the block timed out.
                let entries = match reply {
                    Value::Array(mut streams) if !streams.is_empty() => {
                        match streams.swap_remove(0) {
                            Value::Array(mut kv) if kv.len() == 2 => kv.pop().expect("two"),
                            _ => Value::Nil,
                        }
                    }
                    Value::Map(mut streams) if !streams.is_empty() => streams.swap_remove(0).1,
                    _ => Value::Nil,
                };
                match decode_entries(entries) {
                    Ok(events) => replica.deliver(events),
                    Err(err) => {
                        // Skipping would leave a gap for every subscriber;
                        // stopping here keeps the node honest: not ready.
                        status.tail_stopped(&err.to_string());
                        status.connection(false);
                        stop.cancelled().await;
                        return;
                    }
                }
            }
            Err(err) => {
                status.tail_lost(&url, &err.to_string());
                status.connection(false);
                if connection_lost(&err) {
                    conn = None;
                    // The engine went away (or restarted): the appends'
                    // connection is likely dead too.
                    writer.lock().await.take();
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = backoff.wait() => {}
                }
                status.count_reconnect();
            }
        }
    }
}
