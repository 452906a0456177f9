//! Tokens made outside Larder (openssl + PyJWT, `fixtures/tokens/make-fixtures.py`)
//! in Attic's exact shape must verify with exactly the permissions they state.

use std::path::PathBuf;
use std::time::Duration;

use larder_core::CacheName;
use larder_shared::token::{
    CachePattern, ClaimsBuilder, Permission, TokenError, TokenKey, TokenVerifier,
};

use Permission::*;

/// A fixed "now" (2025-06-15) inside every valid fixture's window.
const NOW: u64 = 1_750_000_000;

fn fixture(name: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests/fixtures/tokens", name]
        .iter()
        .collect();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.trim().to_owned()
}

fn verifier(key: TokenKey) -> TokenVerifier {
    TokenVerifier::new(key, None, None)
}

fn rs256_private() -> TokenKey {
    TokenKey::from_rs256_secret_base64(&fixture("rs256-secret.base64")).unwrap()
}

fn rs256_verifiers() -> Vec<TokenVerifier> {
    vec![
        verifier(rs256_private()),
        verifier(
            TokenKey::from_rs256_secret_base64(&fixture("rs256-secret-pkcs8.base64")).unwrap(),
        ),
        verifier(TokenKey::from_rs256_pubkey_base64(&fixture("rs256-pubkey.base64")).unwrap()),
    ]
}

fn hs256_verifier() -> TokenVerifier {
    verifier(TokenKey::from_hs256_secret_base64(&fixture("hs256-secret.base64")).unwrap())
}

fn granted(claims: &larder_shared::token::Claims, cache: &str) -> Vec<Permission> {
    let cache: CacheName = cache.parse().unwrap();
    claims.permissions_for(&cache).granted().collect()
}

fn check_attic_claims(claims: &larder_shared::token::Claims) {
    assert_eq!(claims.sub, "meow");
    assert_eq!(claims.exp, 4_102_444_800);
    assert_eq!(claims.nbf, Some(1_700_000_000));
    assert_eq!((claims.iat, claims.jti.as_deref()), (None, None));
    assert_eq!(claims.issued_at(), 1_700_000_000, "no iat: issued at nbf");

    // First glob in JSON order wins, nothing merges.
    assert_eq!(granted(claims, "all-x"), [Pull]);
    assert_eq!(granted(claims, "all-ci-abc"), [Pull]);
    // The exact entry wins over the earlier `*-rw`.
    assert_eq!(granted(claims, "cache-rw"), [Pull, Push]);
    assert_eq!(granted(claims, "other-rw"), [Delete]);
    assert_eq!(granted(claims, "cache-ro"), [Pull]);
    assert_eq!(granted(claims, "team-xyz"), [Pull, Push, CreateCache]);
    assert_eq!(
        granted(claims, "ops-1"),
        [
            Delete,
            ConfigureCache,
            ConfigureCacheRetention,
            DestroyCache
        ]
    );
    assert!(granted(claims, "ops-12").is_empty());
    assert!(granted(claims, "forbidden").is_empty());

    let order: Vec<_> = claims.caches.entries().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        order,
        [
            "all-*", "all-ci-*", "*-rw", "cache-rw", "cache-ro", "team-*", "ops-?"
        ]
    );
}

#[test]
fn rs256_attic_token_is_accepted_by_every_form_of_the_key() {
    let token = fixture("rs256-attic.jwt");
    for v in rs256_verifiers() {
        check_attic_claims(&v.verify(&token, NOW).unwrap());
    }
    check_attic_claims(&verifier(rs256_private()).verify_now(&token).unwrap());
}

#[test]
fn hs256_attic_token_is_accepted() {
    check_attic_claims(
        &hs256_verifier()
            .verify(&fixture("hs256-attic.jwt"), NOW)
            .unwrap(),
    );
}

#[test]
fn expired_token_is_rejected() {
    let token = fixture("rs256-expired.jwt");
    for v in rs256_verifiers() {
        let err = v.verify(&token, NOW).unwrap_err();
        assert!(matches!(err, TokenError::Expired), "{err}");
        assert_eq!(err.to_string(), "token expired");
        // Only its age is wrong: inside its window it verifies.
        let claims = v.verify(&token, 1_550_000_000).unwrap();
        assert_eq!(granted(&claims, "cache-ro"), [Pull]);
    }
}

#[test]
fn seed_shaped_token_grants_exactly_create_push_pull_on_its_namespace() {
    // atticadm make-token --sub snyssen --create-cache "snyssen-*" --push "snyssen-*" --pull "snyssen-*"
    let token = fixture("rs256-seed.jwt");
    for v in rs256_verifiers() {
        let claims = v.verify(&token, NOW).unwrap();
        assert_eq!(claims.sub, "snyssen");
        assert_eq!(granted(&claims, "snyssen-infra"), [Pull, Push, CreateCache]);
        assert!(granted(&claims, "other").is_empty());
        let infra: CacheName = "snyssen-infra".parse().unwrap();
        let p = claims.permissions_for(&infra);
        assert!(p.any() && !p.has(Delete) && !p.has(DestroyCache));
    }
}

#[test]
fn larder_builder_writes_the_same_caches_claim_as_atticadm() {
    let pattern: CachePattern = "snyssen-*".parse().unwrap();
    // atticadm grants every --pull, then --push, ..., then --create-cache.
    let minted = ClaimsBuilder::new("snyssen", Duration::from_secs(365 * 86_400), NOW)
        .grant(pattern.clone(), Pull)
        .grant(pattern.clone(), Push)
        .grant(pattern, CreateCache)
        .build()
        .unwrap();
    let attic = verifier(rs256_private())
        .verify(&fixture("rs256-seed.jwt"), NOW)
        .unwrap();
    assert_eq!(minted.caches, attic.caches);
    assert_eq!(
        serde_json::to_string(&minted.caches).unwrap(),
        r#"{"snyssen-*":{"r":1,"w":1,"cc":1}}"#
    );
}

#[test]
fn forged_algorithms_are_refused() {
    for name in ["alg-none.jwt", "hs256-with-rs256-pubkey.jwt"] {
        let token = fixture(name);
        for v in rs256_verifiers() {
            let err = v.verify(&token, NOW).unwrap_err();
            assert!(
                matches!(err, TokenError::AlgorithmNotAccepted),
                "{name}: {err}"
            );
        }
    }
    let err = hs256_verifier()
        .verify(&fixture("alg-none.jwt"), NOW)
        .unwrap_err();
    assert!(matches!(err, TokenError::AlgorithmNotAccepted));
    // Keys are not interchangeable either way.
    let err = hs256_verifier()
        .verify(&fixture("rs256-attic.jwt"), NOW)
        .unwrap_err();
    assert!(matches!(err, TokenError::AlgorithmNotAccepted));
    let err = verifier(rs256_private())
        .verify(&fixture("hs256-attic.jwt"), NOW)
        .unwrap_err();
    assert!(matches!(err, TokenError::AlgorithmNotAccepted));
}

#[test]
fn hs256_token_fails_with_another_secret() {
    let other = verifier(TokenKey::from_hs256_secret_base64("b3RoZXItc2VjcmV0").unwrap());
    let err = other.verify(&fixture("hs256-attic.jwt"), NOW).unwrap_err();
    assert!(matches!(err, TokenError::SignatureInvalid), "{err}");
}
