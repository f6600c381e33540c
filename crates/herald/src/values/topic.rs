//! Topic names: `jobs/42`, `chat/rooms/lobby`.
//!
//! A topic is 1–256 bytes of segments made of `[A-Za-z0-9._~:@-]`, joined by
//! `/` (SPEC §2). Validated once at the edge; everything past the edge holds a
//! [`Topic`], so the hot path never re-checks a string.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest topic or pattern, in bytes.
pub(crate) const MAX_TOPIC_LEN: usize = 256;

/// A validated topic name. Cheap to clone: the text is shared.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

/// Topics compare and hash as their text, so sets of them can be searched by
/// a `&str` (a pattern's literal prefix).
impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Why a topic (or a pattern) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// No characters.
    #[error("is empty")]
    Empty,
    /// Longer than 256 bytes.
    #[error("is {0} bytes long; the limit is {MAX_TOPIC_LEN}")]
    TooLong(usize),
    /// A leading, trailing or doubled `/`.
    #[error("has an empty segment (leading, trailing or doubled '/')")]
    EmptySegment,
    /// A character outside the allowed set.
    #[error(
        "has the character {0:?}, allowed are A-Z a-z 0-9 . _ ~ : @ - and '/' between segments"
    )]
    BadChar(char),
    /// `**` before the last segment.
    #[error("uses '**' before the last segment")]
    DoubleStarNotLast,
    /// `*` beside other characters in a segment.
    #[error("mixes '*' with other characters in one segment")]
    PartialWildcard,
    /// A wildcard where a topic was expected.
    #[error("is a pattern; a topic cannot hold '*'")]
    Wildcard,
}

/// Whether `b` may appear in a topic segment.
pub(crate) fn is_segment_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b':' | b'@' | b'-')
}

/// Checks the length rules shared by topics and patterns.
pub(crate) fn check_length(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(s.len()));
    }
    Ok(())
}

/// Checks one literal segment.
pub(crate) fn check_segment(seg: &str) -> Result<(), TopicError> {
    if seg.is_empty() {
        return Err(TopicError::EmptySegment);
    }
    match seg.bytes().find(|b| !is_segment_byte(*b)) {
        None => Ok(()),
        Some(b'*') => Err(TopicError::Wildcard),
        Some(_) => {
            let ch = seg
                .chars()
                .find(|c| !c.is_ascii() || !is_segment_byte(*c as u8));
            Err(TopicError::BadChar(ch.unwrap_or('?')))
        }
    }
}

impl Topic {
    /// Validates `s` as a topic name.
    pub fn new(s: &str) -> Result<Topic, TopicError> {
        check_length(s)?;
        for seg in s.split('/') {
            check_segment(seg)?;
        }
        Ok(Topic(Arc::from(s)))
    }

    /// The topic as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", &*self.0)
    }
}

impl Serialize for Topic {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Topic::new(&s).map_err(|e| serde::de::Error::custom(format!("topic {s:?} {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spec_examples() {
        for t in ["jobs/42", "chat/rooms/lobby", "a", "A-z_0.9~:@", "x/y/z/w"] {
            assert!(Topic::new(t).is_ok(), "{t}");
        }
        assert!(Topic::new(&"a".repeat(256)).is_ok());
    }

    #[test]
    fn refuses_malformed() {
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert_eq!(Topic::new(&"a".repeat(257)), Err(TopicError::TooLong(257)));
        assert_eq!(Topic::new("a//b"), Err(TopicError::EmptySegment));
        assert_eq!(Topic::new("/a"), Err(TopicError::EmptySegment));
        assert_eq!(Topic::new("a/"), Err(TopicError::EmptySegment));
        assert_eq!(Topic::new("a b"), Err(TopicError::BadChar(' ')));
        assert_eq!(Topic::new("é"), Err(TopicError::BadChar('é')));
        assert_eq!(Topic::new("a/*"), Err(TopicError::Wildcard));
        assert_eq!(Topic::new("a\nb"), Err(TopicError::BadChar('\n')));
    }
}
