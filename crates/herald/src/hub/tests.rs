use super::build::history_settings;
use super::*;
use crate::log::LogError;
use crate::requests::subscribe::SubscribeRequest;
use crate::values::event::SharedEvent;
use crate::values::selector::Selector;
use std::time::Duration;

#[test]
fn dev_mode_trusts_loopback_only() {
    for ip in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
        assert!(
            Hub::is_trusted_in_dev_mode(Some(ip.parse().unwrap())),
            "{ip}"
        );
    }
    for ip in [
        "10.0.0.1",
        "192.168.1.5",
        "8.8.8.8",
        "::ffff:10.0.0.1",
        "fe80::1",
    ] {
        assert!(
            !Hub::is_trusted_in_dev_mode(Some(ip.parse().unwrap())),
            "{ip}"
        );
    }
    assert!(
        !Hub::is_trusted_in_dev_mode(None),
        "unknown peers are not trusted"
    );
}

#[tokio::test]
async fn publish_from_rust_reaches_the_log() {
    let config = Config {
        memory: true,
        ..Config::default()
    };
    let hub = Hub::new(config).unwrap();
    let a = hub.publish(PublishRequest::topic("a", "x")).await.unwrap();
    let b = hub
        .publish(PublishRequest::topic("a", "y").event("e"))
        .await
        .unwrap();
    assert!(b > a);
    assert_eq!(hub.stats().head, b.to_string());
    assert!(matches!(
        hub.publish(PublishRequest::topic("bad topic", "x")).await,
        Err(PublishError::BadTopic(..))
    ));
}

/// A log that answers appends at once and hands events to fan-out only
/// when the test says so: the window between a publisher's answer and
/// the dispatch, held open.
struct HeldLog {
    inner: std::sync::Mutex<crate::log::memory::Inner>,
    sink: std::sync::OnceLock<Arc<dyn crate::log::CommitSink>>,
    held: std::sync::Mutex<Vec<SharedEvent>>,
}

impl HeldLog {
    /// A hub on a new held log.
    fn hub() -> (Hub, Arc<HeldLog>) {
        let settings = history_settings(&Config::default());
        let log = Arc::new(HeldLog {
            inner: std::sync::Mutex::new(crate::log::memory::Inner::new(settings, 1)),
            sink: std::sync::OnceLock::new(),
            held: std::sync::Mutex::new(Vec::new()),
        });
        let config = Config {
            memory: true,
            ..Config::default()
        };
        (Hub::with_log(config, log.clone()).unwrap(), log)
    }

    /// `first` published and dispatched, `held` answered and readable
    /// but not dispatched, and a request resuming from `held`, as a
    /// client that got it (on another stream, another node) sends.
    async fn resuming_from_held() -> (Hub, Arc<HeldLog>, EventId, EventId, SubscribeRequest) {
        let (hub, log) = HeldLog::hub();
        let first = hub.publish(PublishRequest::topic("t", "first")).await;
        log.release();
        let held = hub.publish(PublishRequest::topic("t", "held")).await;
        let (first, held) = (first.unwrap(), held.unwrap());
        let request = SubscribeRequest {
            topics: vec!["t".into()],
            last_event_id: Some(held.to_string()),
            ..Default::default()
        };
        (hub, log, first, held, request)
    }

    fn release(&self) {
        let events = std::mem::take(&mut *self.held.lock().unwrap());
        self.sink.get().unwrap().committed(&events);
    }
}

#[async_trait::async_trait]
impl EventLog for HeldLog {
    fn attach(&self, sink: Arc<dyn crate::log::CommitSink>) -> EventId {
        let _ = self.sink.set(sink);
        EventId(self.inner.lock().unwrap().head())
    }

    async fn append(
        &self,
        drafts: Vec<crate::values::event::EventDraft>,
    ) -> Result<Vec<crate::log::Appended>, LogError> {
        let mut inner = self.inner.lock().unwrap();
        let (appended, events) = inner.prepare(drafts);
        inner.apply(&events);
        self.held.lock().unwrap().extend(events);
        Ok(appended)
    }

    async fn read(
        &self,
        request: crate::log::ReadRequest<'_>,
    ) -> Result<crate::log::Page, LogError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .read(&request, crate::log::now_ms()))
    }

    async fn coverage(
        &self,
        after: EventId,
        selector: &Selector,
    ) -> Result<crate::log::Coverage, LogError> {
        Ok(self.inner.lock().unwrap().coverage(after, selector))
    }

    fn kind(&self) -> &'static str {
        "held"
    }
}

#[tokio::test]
async fn a_stream_resuming_from_an_id_not_yet_dispatched_never_gets_it_again() {
    use futures_util::StreamExt;
    let (hub, log, first, held, request) = HeldLog::resuming_from_held().await;
    let Subscription::Stream { mut body, .. } = hub.subscribe(request).await.unwrap() else {
        panic!("refused");
    };
    log.release();
    let next = hub
        .publish(PublishRequest::topic("t", "next"))
        .await
        .unwrap();
    log.release();
    let mut text = String::new();
    while !text.contains(&format!("id: {next}")) {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("the next event arrives")
            .expect("the stream goes on");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(!text.contains("data: held"), "{text}");
    assert!(!text.contains("data: first"), "{text}");
    assert!(first < held && held < next);
}

#[tokio::test]
async fn a_poll_resuming_from_an_id_not_yet_dispatched_never_gets_it_again() {
    let (hub, log, _, held, request) = HeldLog::resuming_from_held().await;
    let releaser = {
        let log = log.clone();
        let hub = hub.clone();
        tokio::spawn(async move {
            // The poll is waiting once its connection is registered.
            while hub.fanout().stats().connections == 0 {
                tokio::task::yield_now().await;
            }
            log.release();
            hub.publish(PublishRequest::topic("t", "next"))
                .await
                .unwrap();
            log.release();
        })
    };
    let answer = hub.poll(request, Duration::from_secs(5)).await.unwrap();
    let crate::delivery::poll::Polled::Answer(answer) = answer else {
        panic!("the poll was refused")
    };
    releaser.await.unwrap();
    let data: Vec<&str> = answer.events.iter().map(|e| &*e.data).collect();
    assert!(!data.contains(&"held"), "{data:?}");
    assert!(answer.last_event_id >= held, "the position never goes back");
}

fn presence_hub() -> Hub {
    let mut config = Config {
        memory: true,
        ..Config::default()
    };
    config.presence.topics = vec!["rooms/*".into()];
    Hub::new(config).unwrap()
}

async fn join(hub: &Hub, user: &str) -> Subscription {
    let mut identity = Identity::unrestricted(Proof::Embedded);
    identity.user = Some(user.into());
    let request = SubscribeRequest {
        topics: vec!["rooms/1".into()],
        identity: Some(identity),
        ..Default::default()
    };
    hub.subscribe(request).await.unwrap()
}

#[tokio::test]
async fn stopping_writes_the_presence_changes_that_waited_then_ends_every_task() {
    let hub = presence_hub();
    let _stream = join(&hub, "ann").await;
    hub.stop_background().await;
    assert_eq!(hub.stats().presence_updates, 1, "ann's join is written");
    assert_eq!(hub.shared.tasks.running(), 0);
}

#[tokio::test]
async fn a_join_undone_before_the_announcer_runs_is_not_announced() {
    let hub = presence_hub();
    drop(join(&hub, "ann").await);
    let _stream = join(&hub, "bob").await;
    hub.stop_background().await;
    assert_eq!(hub.stats().presence_updates, 1, "only bob's join");
}
