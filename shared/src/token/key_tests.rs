use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs8::LineEnding;

use super::*;
use crate::config::Secret;

/// Fixture keys made by openssl (`tests/fixtures/tokens/make-fixtures.py`).
pub(crate) const SECRET_PEM_B64: &str =
    include_str!("../../tests/fixtures/tokens/rs256-secret.base64");
pub(crate) const SECRET_PKCS8_B64: &str =
    include_str!("../../tests/fixtures/tokens/rs256-secret-pkcs8.base64");
pub(crate) const PUBLIC_PEM_B64: &str =
    include_str!("../../tests/fixtures/tokens/rs256-pubkey.base64");
const PRIVATE_PEM: &str = include_str!("../../tests/fixtures/tokens/rs256-private.pem");
const PUBLIC_PEM: &str = include_str!("../../tests/fixtures/tokens/rs256-public.pem");

fn public_of(key: &TokenKey) -> &RsaPublicKey {
    match key {
        TokenKey::Rs256Private(pair) => &pair.public.key,
        TokenKey::Rs256Public(public) => &public.key,
        TokenKey::Hs256(_) => panic!("not RSA"),
    }
}

#[test]
fn loads_pkcs1_pkcs8_and_spki() {
    let pkcs1 = TokenKey::from_rs256_secret_base64(SECRET_PEM_B64).unwrap();
    let pkcs8 = TokenKey::from_rs256_secret_base64(SECRET_PKCS8_B64).unwrap();
    let public = TokenKey::from_rs256_pubkey_base64(PUBLIC_PEM_B64).unwrap();
    assert!(matches!(pkcs1, TokenKey::Rs256Private(_)));
    assert!(matches!(public, TokenKey::Rs256Public(_)));
    assert_eq!(public_of(&pkcs1), public_of(&pkcs8));
    assert_eq!(public_of(&pkcs1), public_of(&public));
    for key in [&pkcs1, &pkcs8, &public] {
        assert_eq!(key.algorithm(), Algorithm::RS256);
    }
    assert!(pkcs1.encoding_key().is_some() && public.encoding_key().is_none());
}

#[test]
fn loads_pkcs1_public_keys() {
    let key = TokenKey::from_rs256_pubkey_base64(PUBLIC_PEM_B64).unwrap();
    let pem = public_of(&key).to_pkcs1_pem(LineEnding::LF).unwrap();
    assert!(pem.contains("BEGIN RSA PUBLIC KEY"));
    let again = TokenKey::from_rs256_pubkey_base64(&STANDARD.encode(pem)).unwrap();
    assert_eq!(public_of(&again), public_of(&key));
}

#[test]
fn tolerates_wrapped_and_unpadded_base64() {
    let wrapped: String = STANDARD
        .encode(PRIVATE_PEM)
        .as_bytes()
        .chunks(76)
        .map(|line| format!("{}\n", std::str::from_utf8(line).unwrap()))
        .collect();
    TokenKey::from_rs256_secret_base64(&wrapped).unwrap();
    TokenKey::from_rs256_pubkey_base64(&STANDARD_NO_PAD.encode(PUBLIC_PEM)).unwrap();
}

#[test]
fn rejects_keys_in_the_wrong_form_with_a_clear_error() {
    let err = TokenKey::from_rs256_secret_base64(PRIVATE_PEM).unwrap_err();
    assert!(matches!(err, KeyError::RawPem { .. }));
    assert!(err.to_string().contains("base64 -w0"));

    let err = TokenKey::from_rs256_secret_base64(PUBLIC_PEM_B64).unwrap_err();
    assert!(
        matches!(
            err,
            KeyError::WrongPem {
                setting: RS256_SECRET,
                ..
            }
        ),
        "{err}"
    );
    let err = TokenKey::from_rs256_pubkey_base64(SECRET_PEM_B64).unwrap_err();
    assert!(
        matches!(
            err,
            KeyError::WrongPem {
                setting: RS256_PUBKEY,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().starts_with("token-rs256-pubkey-base64 "));

    let err = TokenKey::from_rs256_secret_base64("not base64!").unwrap_err();
    assert!(matches!(err, KeyError::Base64 { .. }));
    let err = TokenKey::from_rs256_secret_base64(&STANDARD.encode("hello")).unwrap_err();
    assert!(matches!(err, KeyError::WrongPem { .. }));
    let err = TokenKey::from_rs256_secret_base64(&STANDARD.encode([0xff, 0xfe])).unwrap_err();
    assert!(matches!(err, KeyError::WrongPem { .. }));

    let corrupt = "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n";
    let err = TokenKey::from_rs256_secret_base64(&STANDARD.encode(corrupt)).unwrap_err();
    assert!(matches!(err, KeyError::Pkcs1 { .. }), "{err}");
    let corrupt = corrupt.replace("RSA PRIVATE KEY", "PRIVATE KEY");
    let err = TokenKey::from_rs256_secret_base64(&STANDARD.encode(corrupt)).unwrap_err();
    assert!(matches!(err, KeyError::Pkcs8 { .. }), "{err}");
}

#[test]
fn rejects_small_rsa_keys() {
    let small = RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024).unwrap();
    let pem = small.to_pkcs1_pem(LineEnding::LF).unwrap();
    let err = TokenKey::from_rs256_secret_base64(&STANDARD.encode(pem.as_bytes())).unwrap_err();
    assert!(
        matches!(err, KeyError::RsaTooSmall { bits: 1024, .. }),
        "{err}"
    );
    let public = small
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let err = TokenKey::from_rs256_pubkey_base64(&STANDARD.encode(public)).unwrap_err();
    assert!(
        matches!(err, KeyError::RsaTooSmall { bits: 1024, .. }),
        "{err}"
    );
}

#[test]
fn hs256_secret_is_raw_bytes() {
    // Binary secrets (`openssl rand 64 | base64`) work, unlike Attic's UTF-8-only decoding.
    let key = TokenKey::from_hs256_secret_base64(&STANDARD.encode([0u8, 0xff, 7])).unwrap();
    assert_eq!(key.algorithm(), Algorithm::HS256);
    assert!(key.rs256_pubkey_base64().is_none());
    assert!(matches!(
        TokenKey::from_hs256_secret_base64(""),
        Err(KeyError::EmptySecret)
    ));
    assert!(matches!(
        TokenKey::from_hs256_secret_base64("%%%"),
        Err(KeyError::Base64 {
            setting: HS256_SECRET,
            ..
        })
    ));
}

#[test]
fn debug_never_shows_secrets() {
    let rsa = TokenKey::from_rs256_secret_base64(SECRET_PEM_B64).unwrap();
    let hs = TokenKey::from_hs256_secret_base64("c2VjcmV0").unwrap();
    assert_eq!(
        format!("{rsa:?}"),
        "Rs256Private(Rs256KeyPair(2048 bits, <redacted>))"
    );
    assert_eq!(format!("{hs:?}"), "Hs256(Hs256Secret(<redacted>))");
    let public = TokenKey::from_rs256_pubkey_base64(PUBLIC_PEM_B64).unwrap();
    assert_eq!(
        format!("{public:?}"),
        "Rs256Public(Rs256PublicKey(2048 bits))"
    );
}

#[test]
fn generated_key_is_base64_pkcs1_of_2048_bits() {
    let value = TokenKey::generate_rs256().unwrap();
    let pem = String::from_utf8(STANDARD.decode(&value).unwrap()).unwrap();
    assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let key = TokenKey::from_rs256_secret_base64(&value).unwrap();
    assert_eq!(public_of(&key).size() * 8, 2048);
    assert_ne!(value, TokenKey::generate_rs256().unwrap());
}

#[test]
fn pubkey_export_loads_as_verify_only_key() {
    let private = TokenKey::from_rs256_secret_base64(SECRET_PEM_B64).unwrap();
    let exported = private.rs256_pubkey_base64().unwrap();
    let public = TokenKey::from_rs256_pubkey_base64(&exported).unwrap();
    assert_eq!(public_of(&public), public_of(&private));
    assert_eq!(public.rs256_pubkey_base64(), Some(exported));
}

#[test]
fn from_config_needs_exactly_one_key() {
    let mut signing = JwtSigningConfig::default();
    assert!(matches!(
        TokenKey::from_config(&signing),
        Err(KeyError::NotExactlyOne)
    ));
    signing.token_hs256_secret_base64 = Some(Secret::new("c2VjcmV0"));
    assert!(matches!(
        TokenKey::from_config(&signing),
        Ok(TokenKey::Hs256(_))
    ));
    signing.token_rs256_pubkey_base64 = Some(Secret::new(PUBLIC_PEM_B64));
    assert!(matches!(
        TokenKey::from_config(&signing),
        Err(KeyError::NotExactlyOne)
    ));
    signing.token_hs256_secret_base64 = None;
    assert!(matches!(
        TokenKey::from_config(&signing),
        Ok(TokenKey::Rs256Public(_))
    ));
    signing.token_rs256_pubkey_base64 = None;
    signing.token_rs256_secret_base64 = Some(Secret::new(SECRET_PKCS8_B64));
    assert!(matches!(
        TokenKey::from_config(&signing),
        Ok(TokenKey::Rs256Private(_))
    ));
}
