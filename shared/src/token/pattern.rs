//! Cache name patterns: the keys of a token's `caches` claim.
//!
//! A pattern is a cache name (`^[A-Za-z0-9][A-Za-z0-9-_+]{0,49}$`) in which `*`
//! (any run of characters, possibly empty) and `?` (exactly one character) may
//! also appear, the first position included: `^[A-Za-z0-9*?][A-Za-z0-9-_+*?]{0,49}$`.
//! That is Attic's pattern syntax plus `?`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use larder_core::cache_name::{CacheName, MAX_LEN};

/// A validated cache name pattern, such as `team-*` or an exact `snyssen-infra`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CachePattern(String);

/// Why a string is not a cache name pattern.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CachePatternError {
    /// Empty or longer than 50 characters.
    #[error("cache name pattern must be 1 to {MAX_LEN} characters long")]
    Length,
    /// The first character must be alphanumeric, `*` or `?`.
    #[error("cache name pattern must start with a letter, a digit, `*` or `?`")]
    FirstChar,
    /// A character outside `A-Za-z0-9-_+*?`.
    #[error("cache name pattern contains the invalid character {0:?}")]
    InvalidChar(char),
}

impl CachePattern {
    /// Validates a pattern.
    pub fn new(pattern: &str) -> Result<Self, CachePatternError> {
        if pattern.is_empty() || pattern.len() > MAX_LEN {
            return Err(CachePatternError::Length);
        }
        let mut chars = pattern.chars();
        if !chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || is_wildcard(c))
        {
            return Err(CachePatternError::FirstChar);
        }
        if let Some(bad) = chars.find(|&c| !(is_name_char(c) || is_wildcard(c))) {
            return Err(CachePatternError::InvalidChar(bad));
        }
        Ok(Self(pattern.to_owned()))
    }

    /// The pattern as written in the token.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the pattern holds a wildcard; if not, it matches only itself.
    pub fn is_glob(&self) -> bool {
        self.0.chars().any(is_wildcard)
    }

    /// Whether `name` matches: `*` is any run of characters, `?` one character.
    pub fn matches(&self, name: &CacheName) -> bool {
        glob_match(self.0.as_bytes(), name.as_str().as_bytes(), b'*', b'?')
    }
}

fn is_wildcard(c: char) -> bool {
    c == '*' || c == '?'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+')
}

/// Wildcard match in O(pattern × name): on a mismatch, let the most recent
/// `star_sym` swallow one more symbol; `one` matches exactly one. Cache patterns
/// and names are ASCII, so they match as bytes; OIDC claim patterns
/// ([`crate::oidc`]) match as characters.
pub(crate) fn glob_match<T: Copy + PartialEq>(
    pattern: &[T],
    name: &[T],
    star_sym: T,
    one: T,
) -> bool {
    let (mut p, mut n) = (0, 0);
    // Position after the last `*` seen, and the name position it is retried at.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(&c) if c == star_sym => {
                star = Some((p + 1, n));
                p += 1;
            }
            Some(&c) if c == one || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((after_star, retry)) => {
                    p = after_star;
                    n = retry + 1;
                    star = Some((after_star, retry + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == star_sym)
}

impl From<&CacheName> for CachePattern {
    /// The pattern matching exactly this cache.
    fn from(name: &CacheName) -> Self {
        Self(name.as_str().to_owned())
    }
}

impl FromStr for CachePattern {
    type Err = CachePatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for CachePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CachePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CachePattern({:?})", self.0)
    }
}

impl Serialize for CachePattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CachePattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(|e| serde::de::Error::custom(format!("{e}: {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> CachePattern {
        s.parse().unwrap()
    }

    fn name(s: &str) -> CacheName {
        s.parse().unwrap()
    }

    #[test]
    fn accepts_names_and_wildcards() {
        for ok in [
            "team-*",
            "*",
            "?",
            "*-ci",
            "a",
            "user+cache",
            "x?y*z",
            "A_b-9",
        ] {
            assert_eq!(pat(ok).as_str(), ok);
        }
        assert_eq!(pat(&"a".repeat(50)).as_str().len(), 50);
    }

    #[test]
    fn rejects_invalid_patterns() {
        assert_eq!(CachePattern::new(""), Err(CachePatternError::Length));
        assert_eq!(
            CachePattern::new(&"a".repeat(51)),
            Err(CachePatternError::Length)
        );
        assert_eq!(CachePattern::new("-x"), Err(CachePatternError::FirstChar));
        assert_eq!(CachePattern::new("_x"), Err(CachePatternError::FirstChar));
        assert_eq!(
            CachePattern::new("a b"),
            Err(CachePatternError::InvalidChar(' '))
        );
        assert_eq!(
            CachePattern::new("team/*"),
            Err(CachePatternError::InvalidChar('/'))
        );
        assert_eq!(CachePattern::new("[ab]"), Err(CachePatternError::FirstChar));
        assert_eq!(
            CachePattern::new("a[b]"),
            Err(CachePatternError::InvalidChar('['))
        );
    }

    #[test]
    fn star_matches_any_run() {
        let p = pat("team-*");
        assert!(p.matches(&name("team-")));
        assert!(p.matches(&name("team-abc")));
        assert!(!p.matches(&name("abc-team")));
        assert!(!p.matches(&name("team")));
        assert!(pat("*").matches(&name("literally-anything")));
        assert!(pat("a*b*c").matches(&name("aXXbYYbc")));
        assert!(!pat("a*b*c").matches(&name("aXXbYYbcd")));
        assert!(pat("*-ci").matches(&name("team-ci")));
        assert!(pat("**x").matches(&name("x")));
    }

    #[test]
    fn question_mark_matches_one_char() {
        let p = pat("v?");
        assert!(p.matches(&name("v1")));
        assert!(!p.matches(&name("v")));
        assert!(!p.matches(&name("v10")));
        assert!(pat("?*").matches(&name("a")));
        assert!(pat("a?c").matches(&name("a-c")));
    }

    #[test]
    fn literal_matches_only_itself_case_sensitively() {
        let p = pat("no-wildcard");
        assert!(!p.is_glob());
        assert!(p.matches(&name("no-wildcard")));
        assert!(!p.matches(&name("no-wildcard-x")));
        assert!(!p.matches(&name("x-no-wildcard")));
        assert!(!p.matches(&name("No-Wildcard")));
        assert!(pat("a*").is_glob() && pat("a?").is_glob());
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let p: CachePattern = serde_json::from_str("\"team-*\"").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"team-*\"");
        assert!(serde_json::from_str::<CachePattern>("\"bad pattern\"").is_err());
        assert_eq!(CachePattern::from(&name("abc")), pat("abc"));
        assert_eq!(pat("x*").to_string(), "x*");
    }
}
