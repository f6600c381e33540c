//! What one connection receives: its patterns, its `event=` types and its
//! identity. The same [`Selector::wants`] decides live delivery and replay,
//! so a resumed stream can never hold an event the live stream would not.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::values::event::{filter_matches, Event};
use crate::values::pattern::Pattern;

/// Who a connection is and what it reads: its patterns, event types,
/// user and verified claims. Fan-out and every read of history ask it
/// whether an event is for this connection.
#[derive(Debug, Clone)]
pub struct Selector {
    /// The connection's id (`herald.connected`).
    pub connection_id: Arc<str>,
    /// The patterns it joined with.
    pub patterns: Vec<Pattern>,
    /// `event=` types; `None` = every type.
    pub event_types: Option<Vec<Box<str>>>,
    /// The verified `sub`, when the connection has a token.
    pub user: Option<Box<str>>,
    /// The verified `herald.meta` claims that `filter` is evaluated against.
    pub meta: Map<String, Value>,
}

impl Selector {
    /// Whether this connection receives `event` (replay and live alike).
    pub fn wants(&self, event: &Event) -> bool {
        self.accepts(event) && (event.target.broadcast || self.topic_matches(event))
    }

    /// True when one of the event's topics matches one of the patterns, or
    /// when the event has no topics (it is then addressed by `to` alone).
    pub fn topic_matches(&self, event: &Event) -> bool {
        event.topics.is_empty()
            || event
                .topics
                .iter()
                .any(|t| self.patterns.iter().any(|p| p.matches(t)))
    }

    /// Every rule except the topic match, which the subscription index has
    /// already established on the live path.
    pub fn accepts(&self, event: &Event) -> bool {
        if let Some(types) = &self.event_types {
            let ty = event.type_name();
            if !types.iter().any(|t| &**t == ty) {
                return false;
            }
        }
        if let Some(filter) = &event.target.filter {
            if !filter_matches(filter, &self.meta) {
                return false;
            }
        }
        if event.target.broadcast || !event.target.is_addressed() {
            return true;
        }
        let to = &event.target;
        to.connections.iter().any(|c| **c == *self.connection_id)
            || self
                .user
                .as_deref()
                .is_some_and(|u| to.users.iter().any(|x| x == u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::event::{EventDraft, EventId, Target};
    use crate::values::topic::Topic;
    use serde_json::json;

    fn selector(patterns: &[&str], user: Option<&str>) -> Selector {
        Selector {
            connection_id: "c1".into(),
            patterns: patterns
                .iter()
                .map(|p| Pattern::parse(p).unwrap())
                .collect(),
            event_types: None,
            user: user.map(Into::into),
            meta: json!({"tenant": "acme"}).as_object().unwrap().clone(),
        }
    }

    fn event(topics: &[&str], target: Target) -> Event {
        let draft = EventDraft {
            topics: topics.iter().map(|t| Topic::new(t).unwrap()).collect(),
            target,
            ..Default::default()
        };
        Event::commit(draft, EventId(1), 0)
    }

    #[test]
    fn delivery_rules_of_spec_section_4() {
        let alice = selector(&["jobs/*"], Some("alice"));
        let to_alice = Target {
            users: vec!["alice".into()],
            ..Default::default()
        };
        let to_bob = Target {
            users: vec!["bob".into()],
            ..Default::default()
        };
        assert!(alice.wants(&event(&["jobs/1"], Target::default())));
        assert!(!alice.wants(&event(&["other"], Target::default())));
        // `to.users` alone: whatever they subscribed to.
        assert!(alice.wants(&event(&[], to_alice.clone())));
        assert!(!alice.wants(&event(&[], to_bob.clone())));
        // topics and `to` together: both must hold.
        assert!(alice.wants(&event(&["jobs/1"], to_alice.clone())));
        assert!(!alice.wants(&event(&["other"], to_alice)));
        assert!(!alice.wants(&event(&["jobs/1"], to_bob)));
        // broadcast: everyone, filter still applies.
        let all = Target {
            broadcast: true,
            ..Default::default()
        };
        assert!(alice.wants(&event(&[], all.clone())));
        let filtered = Target {
            broadcast: true,
            filter: Some(json!({"tenant": "other"}).as_object().unwrap().clone()),
            ..Default::default()
        };
        assert!(!alice.wants(&event(&[], filtered)));
        // connections by id.
        let to_c1 = Target {
            connections: vec!["c1".into()],
            ..Default::default()
        };
        assert!(alice.wants(&event(&[], to_c1)));
    }

    #[test]
    fn anonymous_connections_never_match_user_targets() {
        let anon = selector(&["**"], None);
        let to_alice = Target {
            users: vec!["alice".into()],
            ..Default::default()
        };
        assert!(!anon.wants(&event(&["jobs/1"], to_alice)));
    }

    #[test]
    fn event_type_filter() {
        let mut s = selector(&["a"], None);
        s.event_types = Some(vec!["progress".into()]);
        let mut e = event(&["a"], Target::default());
        assert!(!s.wants(&e));
        e.event_type = Some("progress".into());
        assert!(s.wants(&e));
        s.event_types = Some(vec!["message".into()]);
        e.event_type = None;
        assert!(s.wants(&e));
    }
}
