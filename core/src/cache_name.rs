//! Cache names, validated once at the edge.
//!
//! docs/protocol.md: `^[A-Za-z0-9][A-Za-z0-9-_+]{0,49}$`. A name that parses can be
//! put into URLs, storage keys and log fields without further escaping.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted cache name, in bytes.
pub const MAX_LEN: usize = 50;

/// A validated cache (tenant) name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheName(String);

/// Why a string is not a cache name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheNameError {
    /// Empty or longer than [`MAX_LEN`].
    #[error("cache name must be 1 to {MAX_LEN} characters long")]
    Length,
    /// The first character must be alphanumeric.
    #[error("cache name must start with a letter or digit")]
    FirstChar,
    /// A character outside `A-Za-z0-9-_+`.
    #[error("cache name contains the invalid character {0:?}")]
    InvalidChar(char),
}

impl CacheName {
    /// The name as it appears in URLs and tokens.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CacheName {
    type Err = CacheNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > MAX_LEN {
            return Err(CacheNameError::Length);
        }
        let mut chars = s.chars();
        if !chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) {
            return Err(CacheNameError::FirstChar);
        }
        if let Some(bad) =
            chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+')))
        {
            return Err(CacheNameError::InvalidChar(bad));
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for CacheName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CacheName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheName({:?})", self.0)
    }
}

impl Serialize for CacheName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CacheName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_contract_names() {
        for ok in ["a", "snyssen-infra", "A_b+c-9", &"x".repeat(50)] {
            let name: CacheName = ok.parse().unwrap();
            assert_eq!(name.to_string(), ok);
        }
    }

    #[test]
    fn rejects_bad_names() {
        assert_eq!("".parse::<CacheName>(), Err(CacheNameError::Length));
        assert_eq!(
            "x".repeat(51).parse::<CacheName>(),
            Err(CacheNameError::Length)
        );
        assert_eq!("-a".parse::<CacheName>(), Err(CacheNameError::FirstChar));
        assert_eq!("_a".parse::<CacheName>(), Err(CacheNameError::FirstChar));
        assert_eq!(
            "a/b".parse::<CacheName>(),
            Err(CacheNameError::InvalidChar('/'))
        );
        assert_eq!(
            "a.b".parse::<CacheName>(),
            Err(CacheNameError::InvalidChar('.'))
        );
        assert_eq!("_api".parse::<CacheName>(), Err(CacheNameError::FirstChar));
    }
}
