//! The courier: tasks that write events into the sockets of idle streams,
//! so that a stream with nothing queued costs no wake-up and no poll of
//! its own task per delivery.
//!
//! A stream's writer that finds its queue empty parks its socket (an
//! [`Outlet`](crate::delivery::outlet::Outlet)) in its connection. Fan-out
//! queues an event as always; for a parked connection whose queue was
//! empty it hands the connection here instead of waking the stream's task
//! (one hand-over per committed batch, one wake-up per courier task). A
//! courier then writes whatever each connection has queued by then, in
//! one non-blocking send (`Connection::write_parked`): events that pile
//! up while it works go out together, as a woken task's would.
//!
//! Whatever is not plain gives the stream back to its own task, woken:
//! a socket that takes a write only in part or not at all (the task
//! sends the rest and waits for room, under `stream.write_timeout_secs`),
//! more than one chunk queued, a heartbeat due, the stream closing. The
//! writer takes the socket back under the queue's lock, so the two never
//! write into it at once and what the courier wrote is never written
//! again.
//!
//! One task per worker thread ([`Courier::new`]), each with its share of
//! the connections (by key), so that writes spread over the cores as the
//! streams' own tasks would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::delivery::connection::Connection;
use crate::hangup::Signal;

/// Connections written in one turn of a courier task before it yields its
/// worker to other tasks.
const TURN: usize = 256;

/// The courier's tasks, each with the connections handed to it.
pub(crate) struct Courier {
    shards: Box<[Shard]>,
    /// Set once its tasks are started: streams park only then.
    running: AtomicBool,
}

/// Connections with events for their parked sockets, and the wake-up of
/// the task that writes for them.
#[derive(Default)]
struct Shard {
    due: Mutex<Vec<Arc<Connection>>>,
    ready: Signal,
}

impl Default for Courier {
    fn default() -> Courier {
        Courier::new(1)
    }
}

impl Courier {
    /// A courier of `tasks` tasks (at least one).
    pub(crate) fn new(tasks: usize) -> Courier {
        Courier {
            shards: (0..tasks.max(1)).map(|_| Shard::default()).collect(),
            running: AtomicBool::new(false),
        }
    }

    /// How many tasks it runs ([`Courier::run`] for each index below).
    pub(crate) fn tasks(&self) -> usize {
        self.shards.len()
    }

    /// Notes that its tasks run: from now on streams may park.
    pub(crate) fn start(&self) {
        self.running.store(true, Ordering::Release);
    }

    /// Whether its tasks run; a stream parks its socket only then.
    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Hands over connections whose parked sockets have events queued,
    /// each to its task; leaves `due` empty.
    pub(crate) fn hand(&self, due: &mut Vec<Arc<Connection>>) {
        if due.is_empty() {
            return;
        }
        let n = self.shards.len() as u64;
        if n == 1 {
            let shard = &self.shards[0];
            shard.due.lock().append(due);
            shard.ready.raise();
            return;
        }
        for (i, shard) in self.shards.iter().enumerate() {
            let mut mine = due.iter().filter(|c| c.key % n == i as u64).peekable();
            if mine.peek().is_none() {
                continue;
            }
            shard.due.lock().extend(mine.cloned());
            shard.ready.raise();
        }
        due.clear();
    }

    /// Task `index`: writes for the connections handed to it, as they
    /// come, until `stop` resolves; tells `wrote` each write's queue depth
    /// and the age of its oldest event.
    pub(crate) async fn run(
        &self,
        index: usize,
        mut wrote: impl FnMut(usize, Duration),
        stop: impl std::future::Future<Output = ()>,
    ) {
        let shard = &self.shards[index];
        tokio::pin!(stop);
        let mut work: Vec<Arc<Connection>> = Vec::new();
        loop {
            tokio::select! {
                biased;
                () = &mut stop => return,
                () = std::future::poll_fn(|cx| shard.ready.poll_take(cx)) => {}
            }
            std::mem::swap(&mut work, &mut *shard.due.lock());
            let mut done = 0;
            for conn in work.drain(..) {
                if let Some((depth, age)) = conn.write_parked() {
                    wrote(depth, age);
                }
                done += 1;
                if done % TURN == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overflow;
    use crate::delivery::connection::tests::test_connection;
    use crate::delivery::connection::Offered;
    use crate::delivery::outlet::Outlet;
    use crate::values::event::{Event, EventDraft, EventId, SharedEvent};
    use crate::values::topic::Topic;
    use herald_wire::chunked::ChunkedDecoder;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    fn conn(key: u64) -> Arc<Connection> {
        Arc::new(test_connection(key, 100, Overflow::Disconnect))
    }

    fn event(id: u64, data: &str) -> SharedEvent {
        let draft = EventDraft {
            topics: vec![Topic::new("t").unwrap()],
            data: data.into(),
            ..Default::default()
        };
        Arc::new(Event::commit(draft, EventId(id), 0))
    }

    /// A parked socket (the hub's end) and the client's end.
    async fn socket_pair() -> (Arc<Outlet>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let outlet = Arc::new(Outlet::new(accepted.unwrap().0, true));
        (outlet, client.unwrap())
    }

    /// Reads chunks off `client` until their data holds `want` bytes.
    async fn read_body(client: &mut TcpStream, want: usize) -> Vec<u8> {
        let mut decoder = ChunkedDecoder::new();
        let (mut raw, mut body) = (Vec::new(), Vec::new());
        let mut buf = vec![0u8; 1 << 20];
        while body.len() < want {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {} bytes", body.len());
            raw.extend_from_slice(&buf[..n]);
            let taken = decoder.decode(&raw, &mut body).expect("well-formed chunks");
            raw.drain(..taken);
        }
        body
    }

    #[tokio::test]
    async fn writes_what_waits_for_a_parked_socket_and_keeps_it_parked() {
        let courier = Arc::new(Courier::new(1));
        let task = tokio::spawn({
            let courier = courier.clone();
            async move { courier.run(0, |_, _| {}, std::future::pending()).await }
        });
        let (outlet, mut client) = socket_pair().await;
        let c = conn(1);
        // Its writer wrote up to id 1 before it parked.
        assert!(c.park(&outlet, 1));
        let mut due = Vec::new();
        // At the floor: queued, but not written again.
        for (id, data) in [(1, "old"), (2, "two"), (3, "three")] {
            let offered = c.offer(&event(id, data));
            if offered == Offered::ForCourier {
                due.push(c.clone());
            }
        }
        assert_eq!(due.len(), 1, "handed over once, when its queue was empty");
        courier.hand(&mut due);
        let two = event(2, "two").frame.clone();
        let three = event(3, "three").frame.clone();
        let read = read_body(&mut client, two.len() + three.len());
        let body = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the courier wrote");
        assert_eq!(body, [&two[..], &three[..]].concat(), "one write, in order");
        // Still parked: the next event goes to the courier again, and the
        // writer's floor follows what the courier wrote.
        assert_eq!(c.offer(&event(4, "four")), Offered::ForCourier);
        let mut out = Vec::new();
        let mut floor = 1;
        c.take_back(&mut out, &mut floor).unwrap();
        assert_eq!(floor, 3);
        assert_eq!(
            out.len(),
            1,
            "taken back by the writer before the courier came"
        );
        task.abort();
    }

    #[tokio::test]
    async fn a_write_taken_in_part_leaves_the_rest_and_gives_the_stream_back() {
        let (outlet, mut client) = socket_pair().await;
        let c = conn(1);
        assert!(c.park(&outlet, 0));
        // More than any socket buffer takes at once.
        let big = event(1, &"z".repeat(16 << 20));
        assert_eq!(c.offer(&big), Offered::ForCourier);
        assert!(c.write_parked().is_some());
        let rest = outlet.take_leftover().expect("the socket took a part");
        assert!(!rest.is_empty() && rest.len() < big.frame.len());
        let mut out = Vec::new();
        let mut floor = 0;
        c.take_back(&mut out, &mut floor).unwrap();
        assert!(out.is_empty(), "the event went, in part");
        assert_eq!(floor, 1, "and is not written again");
        assert!(
            std::future::poll_fn(|cx| std::task::Poll::Ready(c.poll_ready(cx).is_ready())).await,
            "its writer was woken"
        );
        // What went and what was left make the chunk whole.
        let want = big.frame.len();
        let reader = tokio::spawn(async move { read_body(&mut client, want).await });
        let mut sent = 0;
        while sent < rest.len() {
            outlet.socket().writable().await.unwrap();
            match outlet.socket().try_write(&rest[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(reader.await.unwrap(), big.frame.to_vec());
    }

    #[test]
    fn each_connection_goes_to_its_task() {
        let courier = Courier::new(3);
        let mut due: Vec<_> = (0..9).map(conn).collect();
        courier.hand(&mut due);
        assert!(due.is_empty());
        for (i, shard) in courier.shards.iter().enumerate() {
            let keys: Vec<u64> = shard.due.lock().iter().map(|c| c.key).collect();
            assert_eq!(keys, vec![i as u64, i as u64 + 3, i as u64 + 6]);
            assert!(shard.ready.is_raised());
        }
    }
}
