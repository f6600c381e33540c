//! Subscription patterns: a topic whose segments may be `*` (exactly one
//! segment) or, as the last segment only, `**` (one or more segments).

use std::fmt;
use std::sync::Arc;

use crate::values::topic::{check_length, check_segment, Topic, TopicError};

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(Box<str>),
    /// `*`: exactly one segment.
    One,
    /// `**`: one or more segments; only ever the last segment.
    Many,
}

/// A validated subscription pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    text: Arc<str>,
    segments: Box<[Segment]>,
}

impl Pattern {
    /// Reads a topic or a pattern (`*` one segment, `**` the rest).
    pub fn parse(s: &str) -> Result<Pattern, TopicError> {
        check_length(s)?;
        let parts: Vec<&str> = s.split('/').collect();
        let last = parts.len() - 1;
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let seg = match *part {
                "*" => Segment::One,
                "**" if i == last => Segment::Many,
                "**" => return Err(TopicError::DoubleStarNotLast),
                lit => match check_segment(lit) {
                    Ok(()) => Segment::Literal(lit.into()),
                    Err(TopicError::Wildcard) => return Err(TopicError::PartialWildcard),
                    Err(e) => return Err(e),
                },
            };
            segments.push(seg);
        }
        Ok(Pattern {
            text: Arc::from(s),
            segments: segments.into(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub(crate) fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// True when the pattern has no wildcard and so names exactly one topic.
    pub fn is_exact(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

    /// True when every topic `other` matches is also matched by `self`:
    /// a right to read (or write) `self` includes a request for `other`.
    pub fn covers(&self, other: &Pattern) -> bool {
        let (mine, theirs) = (&self.segments, &other.segments);
        for (i, seg) in mine.iter().enumerate() {
            let Some(req) = theirs.get(i) else {
                return false; // `self` needs more segments than `other` guarantees
            };
            match (seg, req) {
                // `**` takes one or more segments: anything left in `other`
                // (which has at least this one) fits.
                (Segment::Many, _) => return true,
                (Segment::One, Segment::Many) => return false,
                (Segment::One, _) => {}
                (Segment::Literal(a), Segment::Literal(b)) if a == b => {}
                (Segment::Literal(_), _) => return false,
            }
        }
        mine.len() == theirs.len()
    }

    /// True when some topic is matched by both patterns.
    pub fn intersects(&self, other: &Pattern) -> bool {
        let (a, b) = (&self.segments, &other.segments);
        for k in 0.. {
            match (a.get(k), b.get(k)) {
                (None, None) => return true,
                // `**` takes the rest, which the other has at least one of.
                (Some(Segment::Many), Some(_)) | (Some(_), Some(Segment::Many)) => return true,
                (None, Some(_)) | (Some(_), None) => return false,
                (Some(Segment::Literal(x)), Some(Segment::Literal(y))) if x != y => return false,
                _ => {}
            }
        }
        unreachable!("the loop returns once both patterns end")
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &Topic) -> bool {
        let mut parts = topic.as_str().split('/');
        for seg in self.segments.iter() {
            match seg {
                Segment::Many => return parts.next().is_some(),
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(lit) => {
                    if parts.next() != Some(&**lit) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", &*self.text)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The obvious matcher, written independently of [`Pattern::matches`]:
    /// compares segment lists recursively.
    pub(crate) fn naive_matches(pattern: &str, topic: &str) -> bool {
        fn go(p: &[&str], t: &[&str]) -> bool {
            match (p.first(), t.first()) {
                (None, None) => true,
                (Some(&"**"), _) => p.len() == 1 && !t.is_empty(),
                (Some(&"*"), Some(_)) => go(&p[1..], &t[1..]),
                (Some(a), Some(b)) => a == b && go(&p[1..], &t[1..]),
                _ => false,
            }
        }
        let p: Vec<&str> = pattern.split('/').collect();
        let t: Vec<&str> = topic.split('/').collect();
        go(&p, &t)
    }

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[test]
    fn spec_examples() {
        let p = Pattern::parse("jobs/*").unwrap();
        assert!(p.matches(&t("jobs/42")));
        assert!(!p.matches(&t("jobs")));
        assert!(!p.matches(&t("jobs/42/x")));
        let p = Pattern::parse("chat/**").unwrap();
        assert!(p.matches(&t("chat/rooms")));
        assert!(p.matches(&t("chat/rooms/lobby")));
        assert!(!p.matches(&t("chat")));
        assert!(!p.matches(&t("chatter/x")));
        let p = Pattern::parse("a/*/c").unwrap();
        assert!(p.matches(&t("a/b/c")));
        assert!(!p.matches(&t("a/b/d")));
        assert!(Pattern::parse("**").unwrap().matches(&t("anything/at/all")));
        assert!(Pattern::parse("jobs/42").unwrap().is_exact());
    }

    #[test]
    fn refuses_bad_patterns() {
        assert_eq!(Pattern::parse("a/**/b"), Err(TopicError::DoubleStarNotLast));
        assert_eq!(Pattern::parse("a*"), Err(TopicError::PartialWildcard));
        assert_eq!(Pattern::parse("a/***"), Err(TopicError::PartialWildcard));
        assert_eq!(Pattern::parse("a//b"), Err(TopicError::EmptySegment));
        assert_eq!(Pattern::parse(""), Err(TopicError::Empty));
        assert!(Pattern::parse("a/b c").is_err());
    }

    /// Every topic of up to 5 segments (one more than the longest pattern) over the strategy's alphabet plus
    /// one segment no pattern names.
    fn all_topics() -> Vec<String> {
        let alphabet = ["a", "b", "c", "ab", "z"];
        let mut out: Vec<String> = Vec::new();
        let mut level: Vec<String> = alphabet.iter().map(|s| s.to_string()).collect();
        for _ in 0..5 {
            out.extend(level.iter().cloned());
            level = level
                .iter()
                .flat_map(|t| alphabet.iter().map(move |s| format!("{t}/{s}")))
                .collect();
        }
        out
    }

    pub(crate) fn seg() -> impl Strategy<Value = String> {
        prop_oneof!["a", "b", "c", "ab"].prop_map(String::from)
    }

    pub(crate) fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(seg(), 1..5).prop_map(|v| v.join("/"))
    }

    pub(crate) fn pattern_strategy() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![seg(), Just("*".to_string())], 0..4),
            prop::bool::ANY,
        )
            .prop_filter_map("non-empty", |(mut v, many)| {
                if many {
                    v.push("**".into());
                }
                (!v.is_empty()).then(|| v.join("/"))
            })
    }

    #[test]
    fn coverage_of_patterns() {
        let covers = |a: &str, b: &str| {
            Pattern::parse(a)
                .unwrap()
                .covers(&Pattern::parse(b).unwrap())
        };
        assert!(covers("chat/**", "chat/rooms/*"));
        assert!(covers("chat/**", "chat/**"));
        assert!(covers("chat/*", "chat/lobby"));
        assert!(covers("**", "a/b/c"));
        assert!(covers("users/alice/**", "users/alice/inbox"));
        assert!(!covers("chat/*", "chat/**"));
        assert!(!covers("chat/*", "chat/a/b"));
        assert!(!covers("chat/lobby", "chat/*"));
        assert!(!covers("users/alice/**", "users/*/inbox"));
        assert!(!covers("a/b", "a"));
        assert!(!covers("a/**", "a"));
    }

    proptest! {
        /// Soundness: when `g` covers `p`, every topic `p` matches, `g`
        /// matches. Completeness: when it does not, some topic shows it
        /// (searched among short topics over the same alphabet).
        #[test]
        fn coverage_agrees_with_matching(g in pattern_strategy(), p in pattern_strategy()) {
            let (gp, pp) = (Pattern::parse(&g).unwrap(), Pattern::parse(&p).unwrap());
            let witness = all_topics().into_iter().find(|t| naive_matches(&p, t) && !naive_matches(&g, t));
            prop_assert_eq!(gp.covers(&pp), witness.is_none(), "g={} p={} witness={:?}", g, p, witness);
        }

        /// Intersection: true exactly when some topic matches both.
        #[test]
        fn intersection_agrees_with_matching(g in pattern_strategy(), p in pattern_strategy()) {
            let (gp, pp) = (Pattern::parse(&g).unwrap(), Pattern::parse(&p).unwrap());
            let both = all_topics().into_iter().any(|t| naive_matches(&p, &t) && naive_matches(&g, &t));
            prop_assert_eq!(gp.intersects(&pp), both, "g={} p={}", g, p);
        }

        #[test]
        fn agrees_with_naive_matcher(p in pattern_strategy(), topic in topic_strategy()) {
            let pattern = Pattern::parse(&p).unwrap();
            prop_assert_eq!(pattern.matches(&t(&topic)), naive_matches(&p, &topic));
        }
    }
}
