use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use super::*;
use crate::token::Permission;
use crate::token::key::tests::{PUBLIC_PEM_B64, SECRET_PEM_B64};
use larder_core::cache_name::CacheName;

const NOW: u64 = 1_700_000_000;
const HS_SECRET_B64: &str = "c2hhcmVkLXNlY3JldC1mb3ItdGVzdHM="; // "shared-secret-for-tests"

fn rs_key() -> TokenKey {
    TokenKey::from_rs256_secret_base64(SECRET_PEM_B64).unwrap()
}

fn hs_key() -> TokenKey {
    TokenKey::from_hs256_secret_base64(HS_SECRET_B64).unwrap()
}

/// Another RSA key, generated once: tokens it signs must not verify.
fn other_rs_key() -> &'static TokenKey {
    static KEY: OnceLock<TokenKey> = OnceLock::new();
    KEY.get_or_init(|| {
        TokenKey::from_rs256_secret_base64(&TokenKey::generate_rs256().unwrap()).unwrap()
    })
}

fn valid_claims() -> Value {
    json!({
        "sub": "ci", "exp": NOW + 3600, "nbf": NOW - 10,
        "https://jwt.attic.rs/v1": {"caches": {"team-*": {"r": 1, "w": 1}}}
    })
}

/// Signs arbitrary JSON claims, bypassing Larder's `Claims` type.
fn sign(key: &TokenKey, claims: &Value) -> String {
    let encoding: &EncodingKey = key.encoding_key().unwrap();
    jsonwebtoken::encode(&Header::new(key.algorithm()), claims, encoding).unwrap()
}

fn verifier(key: TokenKey) -> TokenVerifier {
    TokenVerifier::new(key, None, None)
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

#[test]
fn accepts_valid_rs256_and_hs256() {
    for key in [rs_key(), hs_key()] {
        let token = sign(&key, &valid_claims());
        let claims = verifier(key).verify(&token, NOW).unwrap();
        assert_eq!(claims.sub, "ci");
        let team = claims.permissions_for(&"team-a".parse::<CacheName>().unwrap());
        assert!(team.has(Permission::Pull) && team.has(Permission::Push));
        assert!(!team.has(Permission::Delete));
    }
}

#[test]
fn public_key_verifies_private_keys_tokens() {
    let token = sign(&rs_key(), &valid_claims());
    let public = TokenKey::from_rs256_pubkey_base64(PUBLIC_PEM_B64).unwrap();
    verifier(public).verify(&token, NOW).unwrap();
}

#[test]
fn alg_none_is_not_accepted() {
    let header = b64(&json!({"alg": "none", "typ": "JWT"}));
    let token = format!("{header}.{}.", b64(&valid_claims()));
    for key in [rs_key(), hs_key()] {
        let err = verifier(key).verify(&token, NOW).unwrap_err();
        assert!(matches!(err, TokenError::AlgorithmNotAccepted), "{err}");
        assert_eq!(err.to_string(), "token algorithm not accepted");
    }
}

#[test]
fn hs256_is_not_accepted_by_an_rs256_verifier() {
    // The classic confusion: HMAC keyed with the RSA public key PEM.
    let public_pem = base64::engine::general_purpose::STANDARD
        .decode(PUBLIC_PEM_B64.trim())
        .unwrap();
    let confused = EncodingKey::from_secret(&public_pem);
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &valid_claims(), &confused).unwrap();
    let err = verifier(rs_key()).verify(&token, NOW).unwrap_err();
    assert!(matches!(err, TokenError::AlgorithmNotAccepted), "{err}");
    let err = verifier(rs_key())
        .verify(&sign(&hs_key(), &valid_claims()), NOW)
        .unwrap_err();
    assert!(matches!(err, TokenError::AlgorithmNotAccepted), "{err}");
}

#[test]
fn other_algorithms_are_not_accepted() {
    let err = verifier(hs_key())
        .verify(&sign(&rs_key(), &valid_claims()), NOW)
        .unwrap_err();
    assert!(matches!(err, TokenError::AlgorithmNotAccepted));
    for alg in ["RS384", "PS256", "rs256", "ES256", ""] {
        let token = sign(&rs_key(), &valid_claims());
        let rest = token.split_once('.').unwrap().1;
        let forged = format!("{}.{rest}", b64(&json!({"alg": alg})));
        let err = verifier(rs_key()).verify(&forged, NOW).unwrap_err();
        assert!(
            matches!(err, TokenError::AlgorithmNotAccepted),
            "{alg}: {err}"
        );
    }
}

#[test]
fn tokens_from_another_key_have_invalid_signatures() {
    let other_hs = TokenKey::from_hs256_secret_base64("b3RoZXI=").unwrap();
    let err = verifier(hs_key())
        .verify(&sign(&other_hs, &valid_claims()), NOW)
        .unwrap_err();
    assert!(matches!(err, TokenError::SignatureInvalid));
    let err = verifier(rs_key())
        .verify(&sign(other_rs_key(), &valid_claims()), NOW)
        .unwrap_err();
    assert!(matches!(err, TokenError::SignatureInvalid));
    assert_eq!(err.to_string(), "token signature invalid");
}

#[test]
fn tampered_payload_has_an_invalid_signature() {
    let token = sign(&rs_key(), &valid_claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut widened = valid_claims();
    widened["https://jwt.attic.rs/v1"]["caches"] = json!({"*": {"r": 1, "w": 1, "cd": 1}});
    let payload = b64(&widened);
    parts[1] = &payload;
    let err = verifier(rs_key())
        .verify(&parts.join("."), NOW)
        .unwrap_err();
    assert!(matches!(err, TokenError::SignatureInvalid));
}

#[test]
fn malformed_tokens() {
    let good = sign(&hs_key(), &valid_claims());
    let (head, rest) = good.split_once('.').unwrap();
    let too_long = format!("{good}{}", "A".repeat(MAX_TOKEN_LEN));
    let crit = format!("{}.{rest}", b64(&json!({"alg": "HS256", "crit": ["exp"]})));
    let no_alg = format!("{}.{rest}", b64(&json!({"typ": "JWT"})));
    let bad_sig = format!("{}!", good);
    let bad_payload = format!("{head}.***.{}", rest.split_once('.').unwrap().1);
    for token in [
        "", "abc", "a.b", "a.b.c.d", "***.b.c", &too_long, &crit, &no_alg, &bad_sig,
    ] {
        let err = verifier(hs_key()).verify(token, NOW).unwrap_err();
        assert!(matches!(err, TokenError::Malformed(_)), "{token}: {err}");
        assert!(err.to_string().starts_with("token malformed: "));
    }
    // The signature covers the payload text, so a broken payload fails the signature first.
    let err = verifier(hs_key()).verify(&bad_payload, NOW).unwrap_err();
    assert!(matches!(err, TokenError::SignatureInvalid), "{err}");
}

#[test]
fn signed_but_invalid_claims() {
    let mut bad_pattern = valid_claims();
    bad_pattern["https://jwt.attic.rs/v1"]["caches"] = json!({"no spaces": {"r": 1}});
    let mut bad_value = valid_claims();
    bad_value["https://jwt.attic.rs/v1"]["caches"] = json!({"a": {"r": 2}});
    let mut no_sub = valid_claims();
    no_sub.as_object_mut().unwrap().remove("sub");
    let mut bad_exp = valid_claims();
    bad_exp["exp"] = json!("later");
    for claims in [bad_pattern, bad_value, no_sub, bad_exp, json!([1, 2])] {
        let err = verifier(hs_key())
            .verify(&sign(&hs_key(), &claims), NOW)
            .unwrap_err();
        assert!(
            matches!(err, TokenError::InvalidClaims(_)),
            "{claims}: {err}"
        );
        assert!(err.to_string().starts_with("token claims invalid: "));
    }
}

#[test]
fn exp_is_required() {
    let mut claims = valid_claims();
    claims.as_object_mut().unwrap().remove("exp");
    let err = verifier(hs_key())
        .verify(&sign(&hs_key(), &claims), NOW)
        .unwrap_err();
    assert!(matches!(err, TokenError::MissingExpiry));
    assert_eq!(err.to_string(), "token has no expiry");
}

fn with(field: &str, value: u64) -> Value {
    let mut claims = valid_claims();
    claims[field] = json!(value);
    claims
}

#[test]
fn expiry_allows_sixty_seconds_of_skew() {
    let token = sign(&hs_key(), &with("exp", NOW));
    let v = verifier(hs_key());
    v.verify(&token, NOW).unwrap();
    v.verify(&token, NOW + LEEWAY_SECS).unwrap();
    let err = v.verify(&token, NOW + LEEWAY_SECS + 1).unwrap_err();
    assert!(matches!(err, TokenError::Expired));
    assert_eq!(err.to_string(), "token expired");
    let far = sign(&hs_key(), &with("exp", u64::MAX));
    v.verify(&far, u64::MAX).unwrap();
}

#[test]
fn nbf_and_iat_allow_sixty_seconds_of_skew() {
    let v = verifier(hs_key());
    for field in ["nbf", "iat"] {
        let token = sign(&hs_key(), &with(field, NOW + LEEWAY_SECS));
        v.verify(&token, NOW).unwrap();
        let token = sign(&hs_key(), &with(field, NOW + LEEWAY_SECS + 1));
        let err = v.verify(&token, NOW).unwrap_err();
        assert!(matches!(err, TokenError::NotYetValid), "{field}");
        assert_eq!(err.to_string(), "token not yet valid");
        v.verify(&token, NOW + 1).unwrap();
    }
}

#[test]
fn bound_issuer() {
    let v = TokenVerifier::new(hs_key(), Some("larder".into()), None);
    let mut claims = valid_claims();
    let err = v.verify(&sign(&hs_key(), &claims), NOW).unwrap_err();
    assert!(matches!(err, TokenError::IssuerNotAccepted));
    assert_eq!(err.to_string(), "token issuer not accepted");
    claims["iss"] = json!("someone-else");
    let err = v.verify(&sign(&hs_key(), &claims), NOW).unwrap_err();
    assert!(matches!(err, TokenError::IssuerNotAccepted));
    claims["iss"] = json!("larder");
    v.verify(&sign(&hs_key(), &claims), NOW).unwrap();
    // Unbound: any issuer.
    claims["iss"] = json!("anyone");
    verifier(hs_key())
        .verify(&sign(&hs_key(), &claims), NOW)
        .unwrap();
}

#[test]
fn bound_audiences() {
    let v = TokenVerifier::new(hs_key(), None, Some(vec!["a".into(), "b".into()]));
    let mut claims = valid_claims();
    let err = v.verify(&sign(&hs_key(), &claims), NOW).unwrap_err();
    assert!(matches!(err, TokenError::AudienceNotAccepted));
    assert_eq!(err.to_string(), "token audience not accepted");
    claims["aud"] = json!("c");
    assert!(matches!(
        v.verify(&sign(&hs_key(), &claims), NOW),
        Err(TokenError::AudienceNotAccepted)
    ));
    claims["aud"] = json!("b");
    v.verify(&sign(&hs_key(), &claims), NOW).unwrap();
    claims["aud"] = json!(["x", "a"]);
    v.verify(&sign(&hs_key(), &claims), NOW).unwrap();
    // Unbound: any audience; bound to nothing: none.
    verifier(hs_key())
        .verify(&sign(&hs_key(), &claims), NOW)
        .unwrap();
    let nothing = TokenVerifier::new(hs_key(), None, Some(Vec::new()));
    assert!(matches!(
        nothing.verify(&sign(&hs_key(), &claims), NOW),
        Err(TokenError::AudienceNotAccepted)
    ));
}

#[test]
fn attic_upstream_hs256_vector() {
    // From zhaofengli/attic token/src/tests.rs: made with jwt-cli, secret
    // "very secure secret", claims keyed all-*, all-ci-*, cache-ro, cache-rw, team-*.
    let key = TokenKey::from_hs256_secret_base64("dmVyeSBzZWN1cmUgc2VjcmV0").unwrap();
    let token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJleHAiOjQxMDIzMjQ5ODYsImh0dHBzOi8vand0LmF0dGljLnJzL3YxIjp7ImNhY2hlcyI6eyJhbGwtKiI6eyJyIjoxfSwiYWxsLWNpLSoiOnsidyI6MX0sImNhY2hlLXJvIjp7InIiOjF9LCJjYWNoZS1ydyI6eyJyIjoxLCJ3IjoxfSwidGVhbS0qIjp7ImNjIjoxLCJyIjoxLCJ3IjoxfX19LCJpYXQiOjE3MTY2NjA1ODksInN1YiI6Im1lb3cifQ.8vtxp_1OEYdcnkGPM4c9ORXooJZV7DOTS4NRkMKN8mw";
    let claims = verifier(key).verify(token, 1_800_000_000).unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.issued_at()),
        ("meow", 1_716_660_589)
    );
    let on = |name: &str| {
        let p = claims.permissions_for(&name.parse::<CacheName>().unwrap());
        p.granted().collect::<Vec<_>>()
    };
    use Permission::*;
    assert_eq!(on("all-ci-abc"), [Pull]);
    assert_eq!(on("cache-rw"), [Pull, Push]);
    assert_eq!(on("cache-ro"), [Pull]);
    assert_eq!(on("team-xyz"), [Pull, Push, CreateCache]);
    assert!(on("forbidden-cache").is_empty());
}

#[test]
fn verify_now_uses_the_clock() {
    let v = verifier(hs_key());
    v.verify_now(&sign(&hs_key(), &with("exp", u64::MAX / 2)))
        .unwrap();
    let err = v
        .verify_now(&sign(&hs_key(), &with("exp", NOW)))
        .unwrap_err();
    assert!(matches!(err, TokenError::Expired));
}
