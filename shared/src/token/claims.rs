//! The claims of a token and the cache entry that applies to a cache name (see
//! the module doc of [`crate::token`] for the shape and the matching rules).

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::TokenError;
use super::pattern::CachePattern;
use super::permission::{CachePermissions, Permission};
use larder_core::cache_name::CacheName;

/// The `caches` claim: patterns with their permissions, in the token's JSON order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheAccess {
    entries: Vec<(CachePattern, CachePermissions)>,
}

impl CacheAccess {
    /// The entries in JSON order.
    pub fn entries(&self) -> impl Iterator<Item = (&CachePattern, &CachePermissions)> {
        self.entries.iter().map(|(p, perms)| (p, perms))
    }

    /// Whether no entry is present.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Grants `permission` on `pattern`: added to the pattern's entry if present
    /// (one entry per pattern), else a new entry at the end.
    pub fn grant(&mut self, pattern: CachePattern, permission: Permission) {
        match self.entries.iter_mut().find(|(p, _)| *p == pattern) {
            Some((_, perms)) => perms.grant(permission),
            None => {
                let mut perms = CachePermissions::default();
                perms.grant(permission);
                self.entries.push((pattern, perms));
            }
        }
    }

    /// The permissions on `cache`: the exact entry, else the first matching
    /// pattern in JSON order, else none. Entries are never merged.
    pub fn permissions_for(&self, cache: &CacheName) -> CachePermissions {
        let exact = self
            .entries
            .iter()
            .find(|(p, _)| p.as_str() == cache.as_str());
        let first_glob = || self.entries.iter().find(|(p, _)| p.matches(cache));
        exact
            .or_else(first_glob)
            .map(|(_, perms)| *perms)
            .unwrap_or_default()
    }
}

impl Serialize for CacheAccess {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.entries.len()))?;
        for (pattern, perms) in &self.entries {
            map.serialize_entry(pattern, perms)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for CacheAccess {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AccessVisitor;
        impl<'de> Visitor<'de> for AccessVisitor {
            type Value = CacheAccess;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object mapping cache name patterns to permissions")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CacheAccess, A::Error> {
                // Visiting the map keeps the document's order, which decides precedence.
                let mut entries: Vec<(CachePattern, CachePermissions)> = Vec::new();
                while let Some(pattern) = map.next_key::<CachePattern>()? {
                    if entries.iter().any(|(p, _)| *p == pattern) {
                        return Err(de::Error::custom(format!(
                            "duplicate cache pattern {pattern:?}"
                        )));
                    }
                    entries.push((pattern, map.next_value()?));
                }
                Ok(CacheAccess { entries })
            }
        }
        d.deserialize_map(AccessVisitor)
    }
}

/// The claims of a verified (or about to be minted) token.
///
/// Serializes to the JSON shape in the module doc; `aud` is written as a string
/// when it holds one audience, as an array when several, and omitted when empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawClaims", into = "RawClaims")]
pub struct Claims {
    /// Who the token was issued to.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not valid before, seconds since the Unix epoch.
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch (Larder's tokens only).
    pub iat: Option<u64>,
    /// Token id, a ULID (Larder's tokens only): what `revoke-token --jti` names.
    pub jti: Option<String>,
    /// Issuer.
    pub iss: Option<String>,
    /// Audiences; empty when the token names none.
    pub aud: Vec<String>,
    /// `https://jwt.attic.rs/v1` → `caches`.
    pub caches: CacheAccess,
}

impl Claims {
    /// When the token was issued: `iat`, else `nbf` (Attic's tokens), else the
    /// epoch, which makes a token with neither older than any revocation.
    pub fn issued_at(&self) -> u64 {
        self.iat.or(self.nbf).unwrap_or(0)
    }

    /// The permissions on `cache` (exact entry, else first matching pattern).
    pub fn permissions_for(&self, cache: &CacheName) -> CachePermissions {
        self.caches.permissions_for(cache)
    }
}

/// The wire shape: every claim optional, so that a missing `exp` gets its own error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RawClaims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) exp: Option<NumericDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<NumericDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<NumericDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<Audience>,
    #[serde(rename = "https://jwt.attic.rs/v1", default)]
    attic: AtticNamespace,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AtticNamespace {
    #[serde(default)]
    caches: CacheAccess,
}

/// `aud`: one string or an array of strings (RFC 7519 §4.1.3).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// An RFC 7519 NumericDate: non-negative seconds, fractions truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub(super) struct NumericDate(pub(super) u64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DateVisitor;
        impl Visitor<'_> for DateVisitor {
            type Value = NumericDate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative number of seconds since the Unix epoch")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumericDate, E> {
                Ok(NumericDate(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumericDate, E> {
                u64::try_from(v)
                    .map(NumericDate)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumericDate, E> {
                // `as` saturates; the range check keeps that from hiding garbage.
                if v.is_finite() && (0.0..1.8e19).contains(&v) {
                    Ok(NumericDate(v as u64))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(DateVisitor)
    }
}

impl TryFrom<RawClaims> for Claims {
    type Error = TokenError;

    fn try_from(raw: RawClaims) -> Result<Self, TokenError> {
        let exp = raw.exp.ok_or(TokenError::MissingExpiry)?.0;
        Ok(Claims {
            sub: raw.sub,
            exp,
            nbf: raw.nbf.map(|d| d.0),
            iat: raw.iat.map(|d| d.0),
            jti: raw.jti,
            iss: raw.iss,
            aud: match raw.aud {
                None => Vec::new(),
                Some(Audience::One(a)) => vec![a],
                Some(Audience::Many(many)) => many,
            },
            caches: raw.attic.caches,
        })
    }
}

impl From<Claims> for RawClaims {
    fn from(c: Claims) -> Self {
        let mut aud = c.aud;
        RawClaims {
            sub: c.sub,
            exp: Some(NumericDate(c.exp)),
            nbf: c.nbf.map(NumericDate),
            iat: c.iat.map(NumericDate),
            jti: c.jti,
            iss: c.iss,
            aud: match aud.len() {
                0 => None,
                1 => aud.pop().map(Audience::One),
                _ => Some(Audience::Many(aud)),
            },
            attic: AtticNamespace { caches: c.caches },
        }
    }
}

#[cfg(test)]
#[path = "claims_tests.rs"]
mod tests;
