//! Tokens this replica has verified, so a token's signature is checked once
//! rather than on every request (Nix sends its netrc credentials with each
//! one, and an RS256 verification costs about 0.4 ms).
//!
//! Keyed by the SHA-256 of the token, never the token itself. Only
//! successful verifications are kept; a hit still passes the time checks
//! (`exp`, `nbf`) at the current time, so an entry never outlives its
//! token, and revocations are checked by the caller on every request
//! against the in-memory list ([`crate::revocations`]), so a revoked token
//! stops working within `[jwt] revocation-refresh` whether cached or not.

use std::sync::{Arc, Mutex, PoisonError};

use hashlink::LruCache;
use sha2::{Digest, Sha256};

use larder_shared::token::{Claims, TokenError, TokenVerifier};

/// Distinct tokens remembered; the least recently used goes first. A few
/// hundred bytes each, so this bounds the map near a megabyte.
pub const CAPACITY: usize = 4096;

/// SHA-256 of a token: the key under which its verification is kept.
type TokenDigest = [u8; 32];

/// Verified claims by token digest, bounded.
pub struct VerifiedTokens {
    claims: Mutex<LruCache<TokenDigest, Arc<Claims>>>,
}

impl Default for VerifiedTokens {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl std::fmt::Debug for VerifiedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokens").finish_non_exhaustive()
    }
}

impl VerifiedTokens {
    /// A cache of at most `capacity` tokens.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            claims: Mutex::new(LruCache::new(capacity.max(1))),
        }
    }

    /// The claims of `token` at `now`: from the cache if it was verified
    /// before and its times still hold, else verified by `verifier` (and
    /// kept if valid). Revocation is the caller's check.
    pub fn verify(
        &self,
        verifier: &TokenVerifier,
        token: &str,
        now: u64,
    ) -> Result<Arc<Claims>, TokenError> {
        let digest: TokenDigest = Sha256::digest(token.as_bytes()).into();
        let cached = self.lock().get(&digest).cloned();
        if let Some(claims) = cached {
            match verifier.check_times(&claims, now) {
                Ok(()) => return Ok(claims),
                Err(e) => {
                    self.lock().remove(&digest);
                    return Err(e);
                }
            }
        }
        let claims = Arc::new(verifier.verify(token, now)?);
        self.lock().insert(digest, claims.clone());
        Ok(claims)
    }

    /// Number of tokens held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<TokenDigest, Arc<Claims>>> {
        // No operation leaves the map half-written if it panics.
        self.claims.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use larder_shared::token::{ClaimsBuilder, LEEWAY_SECS, TokenKey, mint};

    use super::*;

    fn hs256(secret: &[u8]) -> TokenKey {
        TokenKey::from_hs256_secret_base64(&STANDARD.encode(secret)).unwrap()
    }

    fn key() -> TokenKey {
        hs256(b"0123456789abcdef0123456789abcdef")
    }

    fn token(key: &TokenKey, now: u64, valid: Duration) -> (String, Claims) {
        let claims = ClaimsBuilder::new("ci", valid, now).build().unwrap();
        (mint(key, &claims).unwrap(), claims)
    }

    #[test]
    fn a_verified_token_is_served_from_the_cache() {
        let key = key();
        let verifier = TokenVerifier::new(key.clone(), None, None);
        let cache = VerifiedTokens::default();
        let (t, claims) = token(&key, 1000, Duration::from_secs(3600));
        assert_eq!(*cache.verify(&verifier, &t, 1000).unwrap(), claims);
        assert_eq!(cache.len(), 1);
        // A verifier with another key would refuse it: the hit is the cache's.
        let other = TokenVerifier::new(hs256(&[7; 32]), None, None);
        assert_eq!(*cache.verify(&other, &t, 1001).unwrap(), claims);
    }

    #[test]
    fn an_expired_token_is_refused_even_if_cached() {
        let key = key();
        let verifier = TokenVerifier::new(key.clone(), None, None);
        let cache = VerifiedTokens::default();
        let (t, claims) = token(&key, 1000, Duration::from_secs(60));
        cache.verify(&verifier, &t, 1000).unwrap();
        let after = claims.exp + LEEWAY_SECS + 1;
        assert!(matches!(
            cache.verify(&verifier, &t, after),
            Err(TokenError::Expired)
        ));
        assert!(cache.is_empty(), "the expired entry is dropped");
    }

    #[test]
    fn invalid_tokens_are_not_kept() {
        let key = key();
        let verifier = TokenVerifier::new(key.clone(), None, None);
        let cache = VerifiedTokens::default();
        let (t, _) = token(&key, 1000, Duration::from_secs(3600));
        let forged = format!("{}x", &t[..t.len() - 1]);
        assert!(cache.verify(&verifier, &forged, 1000).is_err());
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_is_bounded() {
        let key = key();
        let verifier = TokenVerifier::new(key.clone(), None, None);
        let cache = VerifiedTokens::with_capacity(2);
        for now in 1000..1005 {
            let (t, _) = token(&key, now, Duration::from_secs(3600));
            cache.verify(&verifier, &t, now).unwrap();
        }
        assert_eq!(cache.len(), 2);
    }
}
