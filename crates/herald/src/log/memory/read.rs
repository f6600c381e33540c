//! Reading the index: what a resume may rely on (`coverage`), and pages
//! of the events a selector matches, merged across its topics in id order.

use std::collections::{BinaryHeap, VecDeque};

use super::cold::ColdEntry;
use super::{History, Inner};
use crate::log::journal::Place;
use crate::log::{Coverage, Page, ReadFrom, ReadRequest, SCAN_BUDGET};
use crate::values::event::{Event, EventId, SharedEvent};
use crate::values::pattern::{Pattern, Segment};
use crate::values::selector::Selector;
use crate::values::topic::Topic;

impl Inner {
    pub(crate) fn coverage(&self, after: EventId, selector: &Selector) -> Coverage {
        let after = after.0;
        // An id below this log's first one was issued by another log (an
        // earlier run); one above the head was never issued.
        if after < self.first_id.saturating_sub(1) || after > self.head() {
            return Coverage::Unknown;
        }
        if after >= self.max_evicted.max(self.pruned_floor) {
            return Coverage::Covered;
        }
        if after < self.pruned_floor || after < self.direct.evicted_through {
            return Coverage::Expired;
        }
        // The topic-less history was checked above.
        let lost = match self.histories(selector) {
            Some(histories) => histories.iter().any(|h| h.evicted_through > after),
            None => self.topics.iter().any(|(topic, h)| {
                h.evicted_through > after && selector.patterns.iter().any(|p| p.matches(topic))
            }),
        };
        if lost {
            Coverage::Expired
        } else {
            Coverage::Covered
        }
    }

    /// First id whose event was published at or after `ms`. Ids and times
    /// rise together, so this is a binary search over the id range.
    fn first_id_since(&self, ms: u64, until: u64) -> Option<u64> {
        // Cold ids all lie below the events held whole.
        if let Some(id) = self.cold.first_since(ms, until) {
            return Some(id);
        }
        let (mut lo, mut hi) = (*self.events.first_key_value()?.0, until.saturating_add(1));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.events.range(mid..=until).next() {
                Some((&id, s)) if s.event.published_at_ms < ms => lo = id + 1,
                Some(_) | None => hi = mid,
            }
        }
        if lo > until {
            return None; // everything up to `until` is older
        }
        self.events.range(lo..=until).next().map(|(&id, _)| id)
    }

    /// The id lists a read merges: each history's events and its
    /// presence announcements.
    fn id_lists<'a>(histories: &[&'a History]) -> Vec<&'a VecDeque<u64>> {
        histories
            .iter()
            .flat_map(|h| [&h.ids, &h.presence])
            .filter(|ids| !ids.is_empty())
            .collect()
    }

    /// The histories a selector can receive events from: its topics'
    /// (exact patterns are looked up; a wildcard walks only the topics
    /// that share its literal prefix) and the topic-less one. A topic two
    /// patterns match is listed once. `None` when more than
    /// [`MAX_MERGED`] topics match, or finding them would look at more than
    /// [`SCAN_BUDGET`] names: reading the log in id order is then cheaper.
    pub(super) fn histories(&self, selector: &Selector) -> Option<Vec<&History>> {
        let mut found: Vec<&Topic> = Vec::new();
        let mut looked = 0;
        for pattern in &selector.patterns {
            if pattern.is_exact() {
                if let Ok(topic) = Topic::new(pattern.as_str()) {
                    if let Some((t, _)) = self.topics.get_key_value(&topic) {
                        found.push(t);
                    }
                }
                continue;
            }
            let prefix = literal_prefix(pattern);
            let range = self.names.range::<str, _>((
                std::ops::Bound::Included(prefix.as_str()),
                std::ops::Bound::Unbounded,
            ));
            for topic in range.take_while(|t| t.as_str().starts_with(prefix.as_str())) {
                looked += 1;
                if looked > SCAN_BUDGET {
                    return None;
                }
                if pattern.matches(topic) {
                    found.push(topic);
                }
            }
            if found.len() > MAX_MERGED {
                return None;
            }
        }
        found.sort_unstable();
        found.dedup();
        if found.len() > MAX_MERGED {
            return None;
        }
        Some(
            found
                .into_iter()
                .filter_map(|t| self.topics.get(t))
                .chain(std::iter::once(&self.direct))
                .collect(),
        )
    }

    /// Reads a page of events held whole: the in-memory log, which holds
    /// nothing cold.
    pub(crate) fn read(&self, req: &ReadRequest<'_>, now: u64) -> Page {
        let gathered = self.gather(req, now);
        debug_assert!(
            gathered.cold().is_empty(),
            "a log without a journal holds nothing cold"
        );
        gathered.into_page(&[], |_| true)
    }

    /// Gathers a page. Candidates are the ids of the histories the
    /// selector can receive from, merged in id order (an event on two of
    /// them comes once), or, when too many topics match to merge their
    /// histories, every retained event in id order. At most
    /// [`SCAN_BUDGET`] of them are examined under the lock, and a read that
    /// stops there says where to go on. Cold events are gathered by their
    /// place; their own checks (expiry, the selector's filters) wait until
    /// they are read back ([`Gathered::into_page`]).
    pub(crate) fn gather(&self, req: &ReadRequest<'_>, now: u64) -> Gathered {
        let until = req.until.0;
        let (after, want, newest_first) = match req.from {
            ReadFrom::After(id) => (id.0, req.limit, false),
            ReadFrom::Since(ms) => match self.first_id_since(ms, until) {
                Some(first) => (first - 1, req.limit, false),
                None => return Gathered::empty(req),
            },
            ReadFrom::Last(n) => (0, n.min(req.limit), true),
        };
        let mut gathered = Gathered {
            hot: Vec::new(),
            cold: Vec::new(),
            resume: None,
            newest_first,
            want,
            filled_at: None,
            until: req.until,
        };
        if !newest_first && after >= until {
            return gathered;
        }
        let visible =
            |e: &Event| !e.is_expired(now) && req.selector.wants(e) && self.holds(e, req.selector);
        let cold_visible =
            |c: &ColdEntry| self.holds_in(c.id, c.direct, c.topics.as_slice(), req.selector);
        type Candidates<'a> = Box<dyn Iterator<Item = (u64, Option<Candidate<'a>>)> + 'a>;
        let candidates: Candidates<'_> = match self.histories(req.selector) {
            Some(histories) => {
                let lists = Self::id_lists(&histories);
                let merged = match newest_first {
                    true => Merged::newest_first(lists, until),
                    false => Merged::oldest_first(lists, after),
                };
                Box::new(
                    merged
                        .take_while(move |&id| id <= until)
                        .map(|id| (id, self.candidate(id))),
                )
            }
            None if newest_first => Box::new(
                self.events
                    .range(..=until)
                    .rev()
                    .map(|(&id, s)| (id, Some(Candidate::Hot(&s.event))))
                    .chain(
                        self.cold
                            .range(0, until)
                            .rev()
                            .map(|c| (c.id, Some(self.cold_candidate(c)))),
                    ),
            ),
            None => Box::new(
                self.cold
                    .range(after, until)
                    .map(|c| (c.id, Some(self.cold_candidate(c))))
                    .chain(
                        self.events
                            .range(after + 1..=until)
                            .map(|(&id, s)| (id, Some(Candidate::Hot(&s.event)))),
                    ),
            ),
        };
        let mut last = None;
        for (examined, (id, candidate)) in candidates.enumerate() {
            if gathered.len() == want {
                gathered.filled_at = last;
                break;
            }
            if examined == SCAN_BUDGET {
                let kept = gathered.len();
                gathered.resume = Some(match newest_first {
                    true => (ReadFrom::Last(want - kept), EventId(id)),
                    false => (ReadFrom::After(EventId(id - 1)), req.until),
                });
                break;
            }
            last = Some(id);
            match candidate {
                Some(Candidate::Hot(event)) if visible(event) => gathered.hot.push(event.clone()),
                Some(Candidate::Cold(cold)) if cold_visible(cold) => {
                    let before = gathered.hot.len();
                    gathered.cold.push(ColdRead {
                        before,
                        id: cold.id,
                        place: cold.place,
                        published_at_ms: cold.published_at_ms,
                    })
                }
                _ => {}
            }
        }
        gathered
    }

    fn candidate(&self, id: u64) -> Option<Candidate<'_>> {
        match self.events.get(&id) {
            Some(stored) => Some(Candidate::Hot(&stored.event)),
            None => self.cold.get(id).map(|c| self.cold_candidate(c)),
        }
    }

    /// A cold event as a read sees it: kept whole or to be read back.
    fn cold_candidate<'a>(&'a self, cold: &'a ColdEntry) -> Candidate<'a> {
        match self.cold.whole(cold.id) {
            Some(event) => Candidate::Hot(event),
            None => Candidate::Cold(cold),
        }
    }
}

/// A retained event a read looks at.
enum Candidate<'a> {
    Hot(&'a SharedEvent),
    Cold(&'a ColdEntry),
}

/// A cold event a page needs, in the order examined.
struct ColdRead {
    /// How many events held whole came before it.
    before: usize,
    id: u64,
    place: Place,
    #[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
    published_at_ms: u64,
}

/// A page gathered under the lock, before its cold events are read back.
pub(crate) struct Gathered {
    /// The events found held whole (every check passed), in the order
    /// examined.
    hot: Vec<SharedEvent>,
    /// The cold ones, in the order examined. Expiry and the selector's
    /// filters are checked once they are read back.
    cold: Vec<ColdRead>,
    resume: Option<(ReadFrom, EventId)>,
    newest_first: bool,
    want: usize,
    /// The page filled at this id (the last examined): a page left short
    /// by cold events that fail their checks goes on from there.
    filled_at: Option<u64>,
    until: EventId,
}

impl Gathered {
    fn empty(req: &ReadRequest<'_>) -> Gathered {
        Gathered {
            hot: Vec::new(),
            cold: Vec::new(),
            resume: None,
            newest_first: false,
            want: 0,
            filled_at: None,
            until: req.until,
        }
    }

    fn len(&self) -> usize {
        self.hot.len() + self.cold.len()
    }

    /// The cold events to read back, ascending by id: id and place.
    pub(crate) fn cold(&self) -> Vec<(u64, Place)> {
        self.cold_ascending(|c| (c.id, c.place))
    }

    /// The cold events to read back by id (from a cluster engine),
    /// ascending: id and publish time.
    #[cfg(any(feature = "redis", feature = "nats"))]
    pub(crate) fn cold_by_id(&self) -> Vec<(u64, u64)> {
        self.cold_ascending(|c| (c.id, c.published_at_ms))
    }

    fn cold_ascending<T>(&self, part: impl Fn(&ColdRead) -> T) -> Vec<T> {
        let mut cold: Vec<T> = self.cold.iter().map(part).collect();
        if self.newest_first {
            cold.reverse();
        }
        cold
    }

    /// The page: cold events replaced by those read back (`loaded`,
    /// ascending by id) that `keep` accepts; one that could not be read or
    /// is not kept is left out, and the page then says where to go on.
    pub(crate) fn into_page(self, loaded: &[SharedEvent], keep: impl Fn(&Event) -> bool) -> Page {
        let mut events = self.hot;
        let mut dropped = false;
        if !self.cold.is_empty() {
            let mut whole = std::mem::take(&mut events).into_iter();
            let mut taken = 0;
            events.reserve(whole.len() + self.cold.len());
            for ColdRead { before, id, .. } in self.cold {
                events.extend(whole.by_ref().take(before - taken));
                taken = before;
                match loaded.binary_search_by_key(&id, |e| e.id.0) {
                    Ok(at) if keep(&loaded[at]) => events.push(loaded[at].clone()),
                    _ => dropped = true,
                }
            }
            events.extend(whole);
        }
        let mut resume = self.resume;
        if let (true, None, Some(last)) = (dropped, resume, self.filled_at) {
            resume = Some(match self.newest_first {
                true => (
                    ReadFrom::Last(self.want - events.len()),
                    EventId(last.saturating_sub(1)),
                ),
                false => (ReadFrom::After(EventId(last)), self.until),
            });
        }
        if self.newest_first {
            events.reverse();
        }
        Page { events, resume }
    }
}

/// The ids of ascending lists merged into one order, oldest or newest
/// first, each id once (an event on two topics is in both lists).
struct Merged<'a> {
    lists: Vec<&'a VecDeque<u64>>,
    /// The next id of each list not yet taken, with its list and place;
    /// keyed so that the heap's greatest comes next.
    heads: BinaryHeap<(u64, usize, usize)>,
    newest_first: bool,
    previous: Option<u64>,
}

impl<'a> Merged<'a> {
    /// Ids above `after`, ascending.
    fn oldest_first(lists: Vec<&'a VecDeque<u64>>, after: u64) -> Merged<'a> {
        let mut heads = BinaryHeap::with_capacity(lists.len());
        for (l, ids) in lists.iter().enumerate() {
            let at = ids.partition_point(|&id| id <= after);
            if let Some(&id) = ids.get(at) {
                heads.push((u64::MAX - id, l, at));
            }
        }
        Merged {
            lists,
            heads,
            newest_first: false,
            previous: None,
        }
    }

    /// Ids at or below `until`, descending.
    fn newest_first(lists: Vec<&'a VecDeque<u64>>, until: u64) -> Merged<'a> {
        let mut heads = BinaryHeap::with_capacity(lists.len());
        for (l, ids) in lists.iter().enumerate() {
            let end = ids.partition_point(|&id| id <= until);
            if end > 0 {
                heads.push((ids[end - 1], l, end - 1));
            }
        }
        Merged {
            lists,
            heads,
            newest_first: true,
            previous: None,
        }
    }
}

impl Iterator for Merged<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        loop {
            let (key, l, at) = self.heads.pop()?;
            let ids = self.lists[l];
            let (id, next) = match self.newest_first {
                true => (key, at.checked_sub(1)),
                false => (u64::MAX - key, Some(at + 1).filter(|&n| n < ids.len())),
            };
            if let Some(n) = next {
                let key = if self.newest_first {
                    ids[n]
                } else {
                    u64::MAX - ids[n]
                };
                self.heads.push((key, l, n));
            }
            if self.previous != Some(id) {
                self.previous = Some(id);
                return Some(id);
            }
        }
    }
}

/// Most topic histories one read merges; past it the log is read in id
/// order instead.
const MAX_MERGED: usize = 64;

/// The literal segments a wildcard pattern starts with, as the prefix every
/// topic it matches has (`room/*` → `room/`; `*/x` → empty).
fn literal_prefix(pattern: &Pattern) -> String {
    let mut prefix = String::new();
    for segment in pattern.segments() {
        match segment {
            Segment::Literal(s) => {
                prefix.push_str(s);
                prefix.push('/');
            }
            Segment::One | Segment::Many => return prefix,
        }
    }
    prefix
}
