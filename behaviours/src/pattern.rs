//! Topic names and subscription patterns.
//!
//! A topic is a dot-separated key such as `home.kitchen.measured`. Each segment
//! is non-empty and made of ASCII letters, digits, `-`, `_`, `:` or `@`.
//!
//! A pattern is a topic whose segments may also be wildcards:
//! - `*` matches exactly one segment (`home.*.measured` matches
//!   `home.kitchen.measured`, not `home.measured` nor `home.a.b.measured`);
//! - `**` matches zero or more segments (`home.**` matches `home`,
//!   `home.kitchen` and `home.kitchen.measured`; `**` alone matches every topic).
//!
//! Matching is linear in the number of segments for patterns with at most one
//! `**`, and never worse than `O(segments(pattern) × segments(topic))`.

use std::fmt;

/// The longest topic or pattern accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;

/// The largest number of segments in a topic or pattern.
pub const MAX_SEGMENTS: usize = 32;

/// Why a topic or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The string is empty.
    #[error("a topic or pattern cannot be empty")]
    Empty,
    /// The string is longer than [`MAX_TOPIC_LEN`].
    #[error("`{0}…` is longer than {MAX_TOPIC_LEN} bytes")]
    TooLong(String),
    /// More than [`MAX_SEGMENTS`] segments.
    #[error("`{0}` has more than {MAX_SEGMENTS} segments")]
    TooManySegments(String),
    /// A segment is empty (`a..b`, a leading or trailing dot).
    #[error("`{0}` has an empty segment")]
    EmptySegment(String),
    /// A segment has a character outside the allowed set.
    #[error("`{topic}` has an invalid character {character:?}: use letters, digits, '-', '_', ':' or '@'")]
    InvalidCharacter {
        /// The offending topic or pattern.
        topic: String,
        /// The first invalid character.
        character: char,
    },
    /// A wildcard appears in a topic (topics are concrete keys).
    #[error("`{0}` is a pattern; publish needs a concrete topic without `*` or `**`")]
    WildcardInTopic(String),
    /// A wildcard is mixed with other characters in one segment (`ho*`).
    #[error("`{0}` mixes a wildcard with other characters in one segment")]
    PartialWildcard(String),
}

/// One segment of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Literal(String),
    One,
    Many,
}

/// A parsed subscription pattern.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    source: String,
    segments: Vec<Segment>,
}

fn check_common(input: &str) -> Result<(), PatternError> {
    if input.is_empty() {
        return Err(PatternError::Empty);
    }
    if input.len() > MAX_TOPIC_LEN {
        let cut: String = input.chars().take(32).collect();
        return Err(PatternError::TooLong(cut));
    }
    if input.split('.').count() > MAX_SEGMENTS {
        return Err(PatternError::TooManySegments(input.to_owned()));
    }
    Ok(())
}

fn check_literal(topic: &str, segment: &str) -> Result<(), PatternError> {
    if segment.is_empty() {
        return Err(PatternError::EmptySegment(topic.to_owned()));
    }
    if let Some(character) = segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '@')))
    {
        if character == '*' {
            return Err(PatternError::PartialWildcard(topic.to_owned()));
        }
        return Err(PatternError::InvalidCharacter {
            topic: topic.to_owned(),
            character,
        });
    }
    Ok(())
}

/// Checks that `topic` is a valid concrete topic (no wildcards).
pub fn validate_topic(topic: &str) -> Result<(), PatternError> {
    check_common(topic)?;
    for segment in topic.split('.') {
        if segment == "*" || segment == "**" {
            return Err(PatternError::WildcardInTopic(topic.to_owned()));
        }
        check_literal(topic, segment)?;
    }
    Ok(())
}

impl Pattern {
    /// Parses a pattern such as `home.*.measured` or `home.**`.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        check_common(pattern)?;
        let mut segments = Vec::new();
        for segment in pattern.split('.') {
            let parsed = match segment {
                "*" => Segment::One,
                "**" => Segment::Many,
                literal => {
                    check_literal(pattern, literal)?;
                    Segment::Literal(literal.to_owned())
                }
            };
            // `a.**.**` is the same as `a.**`: fold repeats so matching stays cheap.
            if parsed == Segment::Many && segments.last() == Some(&Segment::Many) {
                continue;
            }
            segments.push(parsed);
        }
        Ok(Self {
            source: pattern.to_owned(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern has no wildcard (it matches one topic only).
    pub fn is_exact(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

    /// Whether `topic` matches this pattern. `topic` is assumed valid (see
    /// [`validate_topic`]); an invalid topic simply may not match.
    pub fn matches(&self, topic: &str) -> bool {
        let mut segments = [""; MAX_SEGMENTS];
        match split_topic(topic, &mut segments) {
            Some(n) => self.matches_segments(&segments[..n]),
            None => false,
        }
    }

    /// Like [`Pattern::matches`] for a topic already split with [`split_topic`]
    /// (split once, match against many patterns).
    pub fn matches_segments(&self, topic: &[&str]) -> bool {
        matches_from(&self.segments, topic)
    }
}

/// Splits `topic` at dots into `out` without allocating; returns the number
/// of segments, or `None` if there are more than [`MAX_SEGMENTS`].
pub fn split_topic<'a>(topic: &'a str, out: &mut [&'a str; MAX_SEGMENTS]) -> Option<usize> {
    let mut n = 0;
    for segment in topic.split('.') {
        *out.get_mut(n)? = segment;
        n += 1;
    }
    Some(n)
}

/// Iterative wildcard matching with single-`**` backtracking (like glob `*`).
fn matches_from(pattern: &[Segment], topic: &[&str]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // Position of the last `**` seen and the topic index it is currently covering up to.
    let mut backtrack: Option<(usize, usize)> = None;
    while t < topic.len() {
        match pattern.get(p) {
            Some(Segment::Many) => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(Segment::One) => {
                p += 1;
                t += 1;
            }
            Some(Segment::Literal(l)) if l == topic[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                // Let the last `**` swallow one more segment and retry.
                Some((star_p, star_t)) => {
                    backtrack = Some((star_p, star_t + 1));
                    p = star_p + 1;
                    t = star_t + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|s| *s == Segment::Many)
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({})", self.source)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for Pattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, topic: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(topic)
    }

    #[test]
    fn exact_match() {
        assert!(m("home.kitchen.measured", "home.kitchen.measured"));
        assert!(!m("home.kitchen.measured", "home.kitchen"));
        assert!(!m("home.kitchen", "home.kitchen.measured"));
        assert!(Pattern::parse("a.b").unwrap().is_exact());
    }

    #[test]
    fn single_wildcard_matches_one_segment() {
        assert!(m("home.*.measured", "home.kitchen.measured"));
        assert!(!m("home.*.measured", "home.measured"));
        assert!(!m("home.*.measured", "home.a.b.measured"));
        assert!(m("*", "x"));
        assert!(!m("*", "x.y"));
    }

    #[test]
    fn double_wildcard_matches_zero_or_more() {
        assert!(m("home.**", "home"));
        assert!(m("home.**", "home.kitchen"));
        assert!(m("home.**", "home.kitchen.measured"));
        assert!(!m("home.**", "office.kitchen"));
        assert!(m("**", "anything.at.all"));
        assert!(m("a.**.z", "a.z"));
        assert!(m("a.**.z", "a.b.c.z"));
        assert!(!m("a.**.z", "a.b.c"));
        assert!(m("a.**.b.**.c", "a.x.b.y.y.c"));
        assert!(!m("a.**.b.**.c", "a.x.y.c"));
        assert!(m("**.measured", "home.kitchen.measured"));
        assert!(m("a.**.**.b", "a.b"));
    }

    #[test]
    fn split_topics_match_like_whole_ones() {
        let mut buf = [""; MAX_SEGMENTS];
        let n = split_topic("home.kitchen.temp", &mut buf).unwrap();
        assert_eq!(&buf[..n], &["home", "kitchen", "temp"]);
        let p = Pattern::parse("home.*.temp").unwrap();
        assert!(p.matches_segments(&buf[..n]));
        assert!(split_topic(&vec!["a"; 33].join("."), &mut buf).is_none());
        assert!(!p.matches(&vec!["a"; 33].join(".")));
    }

    #[test]
    fn invalid_inputs_are_refused_with_a_reason() {
        assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
        assert!(matches!(
            Pattern::parse("a..b"),
            Err(PatternError::EmptySegment(_))
        ));
        assert!(matches!(
            Pattern::parse("ho*"),
            Err(PatternError::PartialWildcard(_))
        ));
        assert!(matches!(
            Pattern::parse("a b"),
            Err(PatternError::InvalidCharacter { character: ' ', .. })
        ));
        assert!(matches!(
            Pattern::parse(&"a".repeat(300)),
            Err(PatternError::TooLong(_))
        ));
        assert!(matches!(
            Pattern::parse(&vec!["a"; 40].join(".")),
            Err(PatternError::TooManySegments(_))
        ));
        assert!(matches!(
            validate_topic("home.*"),
            Err(PatternError::WildcardInTopic(_))
        ));
        assert!(validate_topic("home.kitchen-1.t_2").is_ok());
    }
}
