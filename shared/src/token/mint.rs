//! Minting tokens: `larder-admin make-token` and the embedded default's root token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Header;
use ulid::Ulid;

use super::TokenError;
use super::claims::{CacheAccess, Claims};
use super::key::TokenKey;
use super::pattern::CachePattern;
use super::permission::Permission;

/// Latest expiry Larder writes: 9999-12-31T23:59:59Z, which every JWT library
/// (and JavaScript's exact integers) can represent.
pub const MAX_EXP: u64 = 253_402_300_799;

/// Builds the claims of a new token, like `atticadm make-token`.
///
/// Grants go to one entry per pattern, kept in first-seen order; granting on a
/// pattern already present adds to its entry. To reproduce atticadm's order,
/// grant every `--pull` pattern first, then `--push`, and so on through
/// [`Permission::ALL`].
#[derive(Debug, Clone)]
pub struct ClaimsBuilder {
    sub: String,
    validity: Duration,
    now: u64,
    issuer: Option<String>,
    audiences: Vec<String>,
    caches: CacheAccess,
}

impl ClaimsBuilder {
    /// A token for `sub`, valid from `now` (seconds since the Unix epoch) for `validity`.
    pub fn new(sub: impl Into<String>, validity: Duration, now: u64) -> Self {
        Self {
            sub: sub.into(),
            validity,
            now,
            issuer: None,
            audiences: Vec::new(),
            caches: CacheAccess::default(),
        }
    }

    /// Grants `permission` on the caches `pattern` matches.
    pub fn grant(mut self, pattern: CachePattern, permission: Permission) -> Self {
        self.caches.grant(pattern, permission);
        self
    }

    /// Grants several permissions on one pattern (e.g. [`Permission::ALL`] for a root token).
    pub fn grant_all(
        mut self,
        pattern: &CachePattern,
        permissions: impl IntoIterator<Item = Permission>,
    ) -> Self {
        for permission in permissions {
            self.caches.grant(pattern.clone(), permission);
        }
        self
    }

    /// Sets `iss` (pass the server's `token-bound-issuer`).
    pub fn issuer(mut self, issuer: Option<String>) -> Self {
        self.issuer = issuer;
        self
    }

    /// Sets `aud` (pass the server's `token-bound-audiences`).
    pub fn audiences(mut self, audiences: Option<Vec<String>>) -> Self {
        self.audiences = audiences.unwrap_or_default();
        self
    }

    /// The claims: `exp = now + validity` (whole seconds), `nbf = iat = now`,
    /// and a fresh ULID `jti` whose timestamp is `now`.
    pub fn build(self) -> Result<Claims, TokenError> {
        let exp = self
            .now
            .checked_add(self.validity.as_secs())
            .filter(|&exp| exp <= MAX_EXP)
            .ok_or(TokenError::ExpiryOutOfRange)?;
        let issued = UNIX_EPOCH
            .checked_add(Duration::from_secs(self.now))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(Claims {
            sub: self.sub,
            exp,
            nbf: Some(self.now),
            iat: Some(self.now),
            jti: Some(Ulid::from_datetime(issued).to_string()),
            iss: self.issuer,
            aud: self.audiences,
            caches: self.caches,
        })
    }
}

/// Signs `claims` with `key` (header `{"typ": "JWT", "alg": …}`); the claims are
/// written as given, so what `--dump-claims` shows is what gets signed.
pub fn mint(key: &TokenKey, claims: &Claims) -> Result<String, TokenError> {
    let encoding = key.encoding_key().ok_or(TokenError::VerifyOnlyKey)?;
    jsonwebtoken::encode(&Header::new(key.algorithm()), claims, encoding)
        .map_err(TokenError::Signing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TokenVerifier;

    fn pat(s: &str) -> CachePattern {
        s.parse().unwrap()
    }

    const NOW: u64 = 1_700_000_000;

    fn hs256() -> TokenKey {
        TokenKey::from_hs256_secret_base64("c2VjcmV0LWZvci1taW50LXRlc3Rz").unwrap()
    }

    #[test]
    fn builder_sets_times_and_ulid_jti() {
        let claims = ClaimsBuilder::new("alice", Duration::from_secs(3600), NOW)
            .build()
            .unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.exp, NOW + 3600);
        assert_eq!((claims.nbf, claims.iat), (Some(NOW), Some(NOW)));
        let jti: Ulid = claims.jti.as_deref().unwrap().parse().unwrap();
        assert_eq!(jti.timestamp_ms(), NOW * 1000);
        assert!(claims.iss.is_none() && claims.aud.is_empty() && claims.caches.is_empty());
    }

    #[test]
    fn jti_is_random() {
        let build = || {
            ClaimsBuilder::new("a", Duration::from_secs(1), NOW)
                .build()
                .unwrap()
                .jti
        };
        assert_ne!(build(), build());
    }

    #[test]
    fn same_pattern_merges_and_first_seen_order_is_kept() {
        // make-token --pull "b-*" --pull "a" --push "a" --push "c" --create-cache "b-*"
        let claims = ClaimsBuilder::new("ci", Duration::from_secs(60), NOW)
            .grant(pat("b-*"), Permission::Pull)
            .grant(pat("a"), Permission::Pull)
            .grant(pat("a"), Permission::Push)
            .grant(pat("c"), Permission::Push)
            .grant(pat("b-*"), Permission::CreateCache)
            .build()
            .unwrap();
        let json = serde_json::to_string(&claims.caches).unwrap();
        assert_eq!(
            json,
            r#"{"b-*":{"r":1,"cc":1},"a":{"r":1,"w":1},"c":{"w":1}}"#
        );
    }

    #[test]
    fn grant_all_gives_every_permission() {
        let claims = ClaimsBuilder::new("root", Duration::from_secs(60), NOW)
            .grant_all(&pat("*"), Permission::ALL)
            .build()
            .unwrap();
        let json = serde_json::to_string(&claims.caches).unwrap();
        assert_eq!(
            json,
            r#"{"*":{"r":1,"w":1,"d":1,"cc":1,"cr":1,"cq":1,"cd":1}}"#
        );
    }

    #[test]
    fn expiry_out_of_range_is_an_error() {
        let huge = Duration::from_secs(u64::MAX);
        assert!(matches!(
            ClaimsBuilder::new("x", huge, NOW).build(),
            Err(TokenError::ExpiryOutOfRange)
        ));
        let ten_thousand_years = Duration::from_secs(10_000 * 31_557_600);
        assert!(matches!(
            ClaimsBuilder::new("x", ten_thousand_years, NOW).build(),
            Err(TokenError::ExpiryOutOfRange)
        ));
    }

    #[test]
    fn minted_token_verifies_with_bound_issuer_and_audience() {
        let claims = ClaimsBuilder::new("ci", Duration::from_secs(600), NOW)
            .grant(pat("team-*"), Permission::Push)
            .issuer(Some("larder".into()))
            .audiences(Some(vec!["cache.example".into()]))
            .build()
            .unwrap();
        let token = mint(&hs256(), &claims).unwrap();
        let verifier = TokenVerifier::new(
            hs256(),
            Some("larder".into()),
            Some(vec!["cache.example".into()]),
        );
        assert_eq!(verifier.verify(&token, NOW).unwrap(), claims);
    }

    #[test]
    fn minted_header_names_the_algorithm() {
        let claims = ClaimsBuilder::new("x", Duration::from_secs(60), NOW)
            .build()
            .unwrap();
        let token = mint(&hs256(), &claims).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::HS256);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
    }

    #[test]
    fn public_key_cannot_mint() {
        let key =
            TokenKey::from_rs256_pubkey_base64(crate::token::key::tests::PUBLIC_PEM_B64).unwrap();
        let claims = ClaimsBuilder::new("x", Duration::from_secs(60), NOW)
            .build()
            .unwrap();
        let err = mint(&key, &claims).unwrap_err();
        assert!(matches!(err, TokenError::VerifyOnlyKey));
        assert!(err.to_string().contains("token-rs256-secret-base64"));
    }
}
