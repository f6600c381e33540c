//! Subscription patterns: a topic whose segments may be `*` (exactly one
//! segment) or, as the last segment only, `**` (one or more segments).

use std::fmt;
use std::sync::Arc;

use crate::topic::{check_length, check_segment, Topic, TopicError};

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
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

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// True when the pattern has no wildcard and so names exactly one topic.
    pub fn is_exact(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

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

    proptest! {
        #[test]
        fn agrees_with_naive_matcher(p in pattern_strategy(), topic in topic_strategy()) {
            let pattern = Pattern::parse(&p).unwrap();
            prop_assert_eq!(pattern.matches(&t(&topic)), naive_matches(&p, &topic));
        }
    }
}
