//! Retained events older than the hot window, with a journal behind the
//! index: what the index needs to know of each without its text (its id,
//! time, topics and place on disk), about 50 bytes where the whole event
//! takes several hundred. Reads fetch their text from the journal
//! (`Segments::read`).
//!
//! Events turn cold oldest first, so cold ids all lie below hot ones and
//! the list is in id order; one that leaves from the middle (its `ttl`, or
//! its topic's count) is marked gone and dropped when it reaches the front.

use std::collections::{HashMap, VecDeque};

use crate::log::journal::Place;
use crate::values::event::SharedEvent;
use crate::values::topic::Topic;

/// One cold event.
pub(super) struct ColdEntry {
    pub(super) id: u64,
    pub(super) published_at_ms: u64,
    pub(super) place: Place,
    /// Its share of `history.max_bytes` ([`super::retained_cost`]).
    pub(super) cost: u32,
    /// Histories still holding it; 0: gone.
    pub(super) refs: u16,
    /// In the topic-less history (a broadcast or a topic-less event).
    pub(super) direct: bool,
    /// Its topics (the histories' own names: no text is copied).
    pub(super) topics: ColdTopics,
}

impl ColdEntry {
    /// An event turning cold (its cost and references clamped to their
    /// fields; a topic-less history's event keeps no topics).
    pub(super) fn new(
        id: u64,
        published_at_ms: u64,
        place: Place,
        cost: u64,
        refs: usize,
        direct: bool,
        topics: ColdTopics,
    ) -> ColdEntry {
        ColdEntry {
            id,
            published_at_ms,
            place,
            cost: cost.min(u32::MAX as u64) as u32,
            refs: refs.min(u16::MAX as usize) as u16,
            direct,
            topics: match direct {
                true => ColdTopics::None,
                false => topics,
            },
        }
    }
}

/// A cold event's topics: one (most events) without an allocation of its
/// own, which would stay behind among the freed blocks of whole events.
#[derive(Default)]
pub(super) enum ColdTopics {
    /// None (a topic-less event).
    #[default]
    None,
    /// One topic.
    One(Topic),
    /// More than one.
    Many(Box<[Topic]>),
}

impl ColdTopics {
    pub(super) fn new(mut topics: Vec<Topic>) -> ColdTopics {
        match topics.len() {
            0 => ColdTopics::None,
            1 => ColdTopics::One(topics.pop().expect("one")),
            _ => ColdTopics::Many(topics.into()),
        }
    }

    pub(super) fn as_slice(&self) -> &[Topic] {
        match self {
            ColdTopics::None => &[],
            ColdTopics::One(topic) => std::slice::from_ref(topic),
            ColdTopics::Many(topics) => topics,
        }
    }
}

/// What a cold event left behind when it was taken out.
pub(super) struct TakenCold {
    pub(super) direct: bool,
    pub(super) topics: ColdTopics,
    pub(super) cost: u32,
}

/// The cold events, ascending by id.
#[derive(Default)]
pub(super) struct ColdIndex {
    entries: VecDeque<ColdEntry>,
    live: usize,
    /// Cold events whose text stays in memory all the same: those a
    /// cluster engine will not give back by id ([`crate::log::Entry::Held`]).
    /// They turn cold with their neighbours so that cold ids stay below
    /// whole ones.
    whole: HashMap<u64, SharedEvent>,
}

impl ColdIndex {
    /// Adds the newest cold event (above every id held).
    pub(super) fn push(&mut self, entry: ColdEntry) {
        debug_assert!(self.entries.back().is_none_or(|b| b.id < entry.id));
        self.live += 1;
        self.entries.push_back(entry);
    }

    /// Adds the newest cold event, keeping its text.
    pub(super) fn push_whole(&mut self, entry: ColdEntry, event: SharedEvent) {
        self.whole.insert(entry.id, event);
        self.push(entry);
    }

    /// The text of a cold event kept whole ([`ColdIndex::push_whole`]).
    pub(super) fn whole(&self, id: u64) -> Option<&SharedEvent> {
        self.whole.get(&id)
    }

    /// Cold events held.
    pub(super) fn len(&self) -> usize {
        self.live
    }

    /// The oldest cold event (the front is never a gone one).
    pub(super) fn first(&self) -> Option<&ColdEntry> {
        self.entries.front()
    }

    fn position(&self, id: u64) -> Option<usize> {
        let at = self.entries.binary_search_by_key(&id, |e| e.id).ok()?;
        (self.entries[at].refs > 0).then_some(at)
    }

    pub(super) fn get(&self, id: u64) -> Option<&ColdEntry> {
        self.position(id).map(|at| &self.entries[at])
    }

    pub(super) fn get_mut(&mut self, id: u64) -> Option<&mut ColdEntry> {
        self.position(id).map(|at| &mut self.entries[at])
    }

    /// The cold events, newest first.
    pub(super) fn newest_first(&self) -> impl Iterator<Item = &ColdEntry> + '_ {
        self.entries.iter().rev().filter(|e| e.refs > 0)
    }

    /// Takes out the newest cold event when it is `id` (gone entries above
    /// it are dropped).
    pub(super) fn pop_newest_if(&mut self, id: u64) -> Option<ColdEntry> {
        while self.entries.back().is_some_and(|e| e.refs == 0) {
            self.entries.pop_back();
        }
        if self.entries.back()?.id != id {
            return None;
        }
        self.live -= 1;
        self.whole.remove(&id);
        self.entries.pop_back()
    }

    /// Takes `id` out; `None` when it is not held.
    pub(super) fn take(&mut self, id: u64) -> Option<TakenCold> {
        let at = self.position(id)?;
        let entry = &mut self.entries[at];
        entry.refs = 0;
        self.whole.remove(&id);
        let taken = TakenCold {
            direct: entry.direct,
            topics: std::mem::take(&mut entry.topics),
            cost: entry.cost,
        };
        self.live -= 1;
        while self.entries.front().is_some_and(|e| e.refs == 0) {
            self.entries.pop_front();
        }
        if self.entries.len() * 4 < self.entries.capacity() && self.entries.capacity() > 1024 {
            self.entries.shrink_to(self.entries.len() * 2);
        }
        Some(taken)
    }

    /// The cold events with ids in `after+1..=until`, ascending.
    pub(super) fn range(
        &self,
        after: u64,
        until: u64,
    ) -> impl DoubleEndedIterator<Item = &ColdEntry> + '_ {
        let start = self.entries.partition_point(|e| e.id <= after);
        let end = self.entries.partition_point(|e| e.id <= until);
        self.entries
            .range(start..end.max(start))
            .filter(|e| e.refs > 0)
    }

    /// The first cold event at or below `until` published at or after `ms`.
    pub(super) fn first_since(&self, ms: u64, until: u64) -> Option<u64> {
        // Times rise with ids, gone entries included.
        let start = self.entries.partition_point(|e| e.published_at_ms < ms);
        self.entries
            .range(start..)
            .take_while(|e| e.id <= until)
            .find(|e| e.refs > 0)
            .map(|e| e.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64) -> ColdEntry {
        ColdEntry {
            id,
            published_at_ms: id * 10,
            place: Place {
                offset: id as u32,
                len: 1,
            },
            cost: 100,
            refs: 1,
            direct: false,
            topics: ColdTopics::new(vec![Topic::new("t").unwrap()]),
        }
    }

    #[test]
    fn gone_entries_are_skipped_and_dropped_from_the_front() {
        let mut cold = ColdIndex::default();
        for id in [2, 3, 5, 8] {
            cold.push(entry(id));
        }
        assert_eq!(cold.take(5).map(|t| t.cost), Some(100));
        assert!(cold.take(5).is_none(), "taken once");
        assert!(cold.get(5).is_none());
        let ids = |c: &ColdIndex, a, u| c.range(a, u).map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(ids(&cold, 0, 100), [2, 3, 8]);
        assert_eq!(ids(&cold, 2, 7), [3]);
        assert_eq!(ids(&cold, 8, 100), Vec::<u64>::new());
        assert_eq!(cold.first_since(40, 100), Some(8), "5 is gone");
        assert_eq!(cold.first_since(40, 7), None, "above until");
        assert_eq!(cold.len(), 3);
        cold.take(2);
        cold.take(3);
        assert_eq!(cold.first().map(|e| e.id), Some(8), "gone fronts dropped");
        assert_eq!(cold.entries.len(), 1);
    }
}
