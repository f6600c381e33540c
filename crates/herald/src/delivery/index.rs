//! The subscription index: which connections a topic reaches, without
//! scanning every connection or every pattern.
//!
//! Patterns live in a trie keyed by segment. Matching a topic walks at most
//! two branches per segment (the literal child and the `*` child) and picks
//! up the `**` subscribers of every node it passes, so its cost grows with the
//! topic's depth and the number of matching subscribers, not with the number
//! of patterns.

use std::collections::HashMap;

use crate::values::pattern::{Pattern, Segment};
use crate::values::topic::Topic;

/// Maps patterns to subscribers (`key` → `V`).
#[derive(Debug)]
pub(crate) struct SubscriptionIndex<V> {
    root: Node<V>,
    len: usize,
}

#[derive(Debug)]
struct Node<V> {
    literal: HashMap<Box<str>, Node<V>>,
    one: Option<Box<Node<V>>>,
    /// Subscribers whose pattern ends at this node.
    here: HashMap<u64, V>,
    /// Subscribers whose pattern ends with `**` after this node.
    many: HashMap<u64, V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            literal: HashMap::new(),
            one: None,
            here: HashMap::new(),
            many: HashMap::new(),
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.one.is_none()
            && self.here.is_empty()
            && self.many.is_empty()
    }
}

impl<V> Default for SubscriptionIndex<V> {
    fn default() -> Self {
        SubscriptionIndex {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V> SubscriptionIndex<V> {
    /// Number of (pattern, subscriber) entries.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds `key` under `pattern`. Returns false if it was already there.
    pub(crate) fn insert(&mut self, pattern: &Pattern, key: u64, value: V) -> bool {
        let mut node = &mut self.root;
        let mut slot_many = false;
        for seg in pattern.segments() {
            node = match seg {
                Segment::Literal(lit) => node.literal.entry(lit.clone()).or_default(),
                Segment::One => node.one.get_or_insert_with(Default::default),
                Segment::Many => {
                    slot_many = true;
                    break;
                }
            };
        }
        let slot = if slot_many {
            &mut node.many
        } else {
            &mut node.here
        };
        let added = slot.insert(key, value).is_none();
        if added {
            self.len += 1;
        }
        added
    }

    /// Removes `key` from under `pattern`, pruning nodes left empty.
    pub(crate) fn remove(&mut self, pattern: &Pattern, key: u64) -> Option<V> {
        fn go<V>(node: &mut Node<V>, segs: &[Segment], key: u64) -> Option<V> {
            match segs.first() {
                None => node.here.remove(&key),
                Some(Segment::Many) => node.many.remove(&key),
                Some(Segment::One) => {
                    let child = node.one.as_mut()?;
                    let v = go(child, &segs[1..], key);
                    if child.is_empty() {
                        node.one = None;
                    }
                    v
                }
                Some(Segment::Literal(lit)) => {
                    let child = node.literal.get_mut(lit)?;
                    let v = go(child, &segs[1..], key);
                    if child.is_empty() {
                        node.literal.remove(lit);
                    }
                    v
                }
            }
        }
        let v = go(&mut self.root, pattern.segments(), key);
        if v.is_some() {
            self.len -= 1;
        }
        v
    }

    /// Calls `f` for every subscriber whose pattern matches `topic`. A
    /// subscriber with several matching patterns is seen once per pattern;
    /// callers deduplicate (fan-out does it with each connection's
    /// last-enqueued id).
    pub(crate) fn for_each_match(&self, topic: &Topic, mut f: impl FnMut(u64, &V)) {
        fn go<V>(node: &Node<V>, rest: Option<&str>, f: &mut impl FnMut(u64, &V)) {
            let Some(rest) = rest else {
                node.here.iter().for_each(|(k, v)| f(*k, v));
                return;
            };
            node.many.iter().for_each(|(k, v)| f(*k, v));
            let (head, tail) = match rest.split_once('/') {
                Some((h, t)) => (h, Some(t)),
                None => (rest, None),
            };
            if let Some(child) = node.literal.get(head) {
                go(child, tail, f);
            }
            if let Some(child) = &node.one {
                go(child, tail, f);
            }
        }
        go(&self.root, Some(topic.as_str()), &mut f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::pattern::tests::{naive_matches, pattern_strategy, topic_strategy};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        /// The index finds exactly the subscribers a naive scan of every
        /// pattern finds, also after removals.
        #[test]
        fn agrees_with_naive_scan(
            patterns in prop::collection::vec(pattern_strategy(), 1..30),
            remove in prop::collection::vec(prop::bool::ANY, 30),
            topics in prop::collection::vec(topic_strategy(), 1..20),
        ) {
            let mut index = SubscriptionIndex::default();
            let mut live = Vec::new();
            for (key, p) in patterns.iter().enumerate() {
                index.insert(&Pattern::parse(p).unwrap(), key as u64, ());
                live.push((key as u64, p.clone()));
            }
            live.retain(|(key, p)| {
                if remove[*key as usize] {
                    assert!(index.remove(&Pattern::parse(p).unwrap(), *key).is_some());
                    false
                } else {
                    true
                }
            });
            prop_assert_eq!(index.len(), live.len());
            for topic in &topics {
                let mut found = BTreeSet::new();
                index.for_each_match(&Topic::new(topic).unwrap(), |k, _| { found.insert(k); });
                let expected: BTreeSet<u64> = live
                    .iter()
                    .filter(|(_, p)| naive_matches(p, topic))
                    .map(|(k, _)| *k)
                    .collect();
                prop_assert_eq!(found, expected);
            }
        }
    }

    #[test]
    fn removal_prunes_the_trie() {
        let mut index = SubscriptionIndex::default();
        let p = Pattern::parse("a/*/c/**").unwrap();
        index.insert(&p, 1, ());
        index.remove(&p, 1);
        assert!(index.root.is_empty());
        assert_eq!(index.len(), 0);
    }
}
