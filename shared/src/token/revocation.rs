//! Revocations, which Attic lacks: a single token by `jti`, or every token of
//! a subject issued before a moment. Held in memory by each API replica and
//! refreshed from the database every `[jwt] revocation-refresh`, so checking
//! costs no query per request.

use std::collections::{HashMap, HashSet};

use super::Claims;

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The token with this `jti`.
    Token {
        /// Token id.
        jti: String,
    },
    /// Every token of `subject` whose [`Claims::issued_at`] is before
    /// `issued_before` (a token without `iat` counts as issued at its `nbf`).
    Subject {
        /// Token subject.
        subject: String,
        /// Unix seconds; tokens issued earlier are revoked.
        issued_before: u64,
    },
}

impl Revocation {
    /// Revokes every token of `subject` issued up to and including second
    /// `now`: a token minted in the same second as the revocation is revoked
    /// too, erring on the safe side.
    pub fn subject_now(subject: impl Into<String>, now: u64) -> Self {
        Revocation::Subject {
            subject: subject.into(),
            issued_before: now + 1,
        }
    }
}

/// The revocations in force, indexed for per-request checks.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    jtis: HashSet<String>,
    subjects: HashMap<String, u64>,
}

impl Revocations {
    /// Indexes a list of revocations (later subject revocations widen earlier ones).
    pub fn new(list: impl IntoIterator<Item = Revocation>) -> Self {
        let mut out = Self::default();
        for r in list {
            match r {
                Revocation::Token { jti } => {
                    out.jtis.insert(jti);
                }
                Revocation::Subject {
                    subject,
                    issued_before,
                } => {
                    let e = out.subjects.entry(subject).or_insert(0);
                    *e = (*e).max(issued_before);
                }
            }
        }
        out
    }

    /// Whether these claims belong to a revoked token.
    pub fn is_revoked(&self, claims: &Claims) -> bool {
        self.is_revoked_parts(claims.jti.as_deref(), &claims.sub, claims.issued_at())
    }

    /// [`Self::is_revoked`] from a token's parts (as `list-tokens` has them).
    pub fn is_revoked_parts(&self, jti: Option<&str>, subject: &str, issued_at: u64) -> bool {
        if jti.is_some_and(|j| self.jtis.contains(j)) {
            return true;
        }
        self.subjects
            .get(subject)
            .is_some_and(|before| issued_at < *before)
    }

    /// Number of revocations held.
    pub fn len(&self) -> usize {
        self.jtis.len() + self.subjects.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::ClaimsBuilder;
    use std::time::Duration;

    fn claims(sub: &str, now: u64) -> Claims {
        ClaimsBuilder::new(sub, Duration::from_secs(3600), now)
            .build()
            .unwrap()
    }

    #[test]
    fn revokes_by_jti() {
        let c = claims("ci", 1000);
        let jti = c.jti.clone().unwrap();
        assert!(Revocations::new([Revocation::Token { jti }]).is_revoked(&c));
        assert!(!Revocations::default().is_revoked(&c));
    }

    #[test]
    fn revokes_subject_up_to_now_inclusive() {
        let r = Revocations::new([Revocation::subject_now("ci", 1000)]);
        assert!(r.is_revoked(&claims("ci", 999)));
        assert!(r.is_revoked(&claims("ci", 1000)));
        assert!(!r.is_revoked(&claims("ci", 1001)));
        assert!(!r.is_revoked(&claims("other", 999)));
    }

    #[test]
    fn token_without_iat_counts_as_issued_at_nbf() {
        let mut c = claims("ci", 500);
        c.iat = None;
        c.nbf = Some(500);
        let r = Revocations::new([Revocation::subject_now("ci", 600)]);
        assert!(r.is_revoked(&c));
        c.nbf = Some(700);
        assert!(!r.is_revoked(&c));
    }
}
