//! The server's token key, from `[jwt.signing]` (Attic's config values).
//!
//! - `token-rs256-secret-base64`: base64 of an RSA private key PEM, PKCS#1
//!   (`BEGIN RSA PRIVATE KEY`, what `openssl genrsa -traditional` writes) or
//!   PKCS#8 (`BEGIN PRIVATE KEY`). Signs and verifies RS256.
//! - `token-rs256-pubkey-base64`: base64 of an RSA public key PEM, SPKI
//!   (`BEGIN PUBLIC KEY`) or PKCS#1 (`BEGIN RSA PUBLIC KEY`). Verifies only.
//! - `token-hs256-secret-base64`: base64 of the HMAC secret bytes. Signs and
//!   verifies HS256.
//!
//! Whitespace inside the base64 (wrapped `base64` output) is ignored and
//! padding is optional. RSA keys must have at least 2048 bits.

use std::fmt;

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use rsa::pkcs1::{
    DecodeRsaPrivateKey, DecodeRsaPublicKey, EncodeRsaPrivateKey, EncodeRsaPublicKey,
};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};

use crate::config::JwtSigningConfig;

const RS256_SECRET: &str = "token-rs256-secret-base64";
const RS256_PUBKEY: &str = "token-rs256-pubkey-base64";
const HS256_SECRET: &str = "token-hs256-secret-base64";

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// Base64 as people paste it: standard alphabet, padding optional.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a configured key cannot be used. Messages name the config key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `[jwt.signing]` sets none of the three keys, or more than one.
    #[error("[jwt.signing] must set exactly one of {RS256_SECRET}, {RS256_PUBKEY}, {HS256_SECRET}")]
    NotExactlyOne,
    /// The value is not base64.
    #[error("{setting} is not valid base64: {source}")]
    Base64 {
        /// The config key.
        setting: &'static str,
        /// The decoder's complaint.
        source: base64::DecodeError,
    },
    /// The value is a PEM file itself rather than its base64.
    #[error("{setting} must be the base64 of the PEM file, not the PEM itself (use `base64 -w0`)")]
    RawPem {
        /// The config key.
        setting: &'static str,
    },
    /// The decoded value is not a PEM block of the expected kind.
    #[error("{setting} must be the base64 of {expected}")]
    WrongPem {
        /// The config key.
        setting: &'static str,
        /// What was expected, in words.
        expected: &'static str,
    },
    /// A PKCS#1 key that does not parse.
    #[error("{setting}: invalid PKCS#1 RSA key: {source}")]
    Pkcs1 {
        /// The config key.
        setting: &'static str,
        /// The parser's complaint.
        source: rsa::pkcs1::Error,
    },
    /// A PKCS#8 private key that does not parse.
    #[error("{setting}: invalid PKCS#8 RSA key: {source}")]
    Pkcs8 {
        /// The config key.
        setting: &'static str,
        /// The parser's complaint.
        source: rsa::pkcs8::Error,
    },
    /// An SPKI public key that does not parse.
    #[error("{setting}: invalid RSA public key: {source}")]
    Spki {
        /// The config key.
        setting: &'static str,
        /// The parser's complaint.
        source: rsa::pkcs8::spki::Error,
    },
    /// The RSA modulus is shorter than `MIN_RSA_BITS` (2048).
    #[error("{setting}: RSA key has {bits} bits, at least {MIN_RSA_BITS} are required")]
    RsaTooSmall {
        /// The config key.
        setting: &'static str,
        /// The key's size.
        bits: usize,
    },
    /// The HMAC secret is empty.
    #[error("{HS256_SECRET} must not be empty")]
    EmptySecret,
    /// Generating a fresh RSA key failed.
    #[error("cannot generate an RSA key: {0}")]
    Generate(#[source] rsa::Error),
}

/// The one key tokens are signed and verified with. `Debug` never shows secrets.
#[derive(Clone)]
pub enum TokenKey {
    /// An RSA private key: signs and verifies RS256.
    Rs256Private(Rs256KeyPair),
    /// An RSA public key: verifies RS256 only, minting fails.
    Rs256Public(Rs256PublicKey),
    /// An HMAC secret: signs and verifies HS256.
    Hs256(Hs256Secret),
}

/// An RSA key pair, ready for `jsonwebtoken`.
#[derive(Clone)]
pub struct Rs256KeyPair {
    encoding: EncodingKey,
    public: Rs256PublicKey,
}

/// An RSA public key, ready for `jsonwebtoken`.
#[derive(Clone)]
pub struct Rs256PublicKey {
    decoding: DecodingKey,
    key: RsaPublicKey,
}

/// An HMAC secret, ready for `jsonwebtoken`.
#[derive(Clone)]
pub struct Hs256Secret {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl TokenKey {
    /// The key `[jwt.signing]` configures (exactly one of its three values).
    pub fn from_config(signing: &JwtSigningConfig) -> Result<Self, KeyError> {
        match (
            &signing.token_rs256_secret_base64,
            &signing.token_rs256_pubkey_base64,
            &signing.token_hs256_secret_base64,
        ) {
            (Some(secret), None, None) => Self::from_rs256_secret_base64(secret.expose()),
            (None, Some(public), None) => Self::from_rs256_pubkey_base64(public.expose()),
            (None, None, Some(secret)) => Self::from_hs256_secret_base64(secret.expose()),
            _ => Err(KeyError::NotExactlyOne),
        }
    }

    /// `token-rs256-secret-base64`: base64 of a PKCS#1 or PKCS#8 private key PEM.
    pub fn from_rs256_secret_base64(value: &str) -> Result<Self, KeyError> {
        let setting = RS256_SECRET;
        let pem = decode_pem(setting, value)?;
        let private = if pem.contains("-----BEGIN RSA PRIVATE KEY-----") {
            RsaPrivateKey::from_pkcs1_pem(&pem)
                .map_err(|source| KeyError::Pkcs1 { setting, source })?
        } else if pem.contains("-----BEGIN PRIVATE KEY-----") {
            RsaPrivateKey::from_pkcs8_pem(&pem)
                .map_err(|source| KeyError::Pkcs8 { setting, source })?
        } else {
            return Err(KeyError::WrongPem {
                setting,
                expected: "an unencrypted RSA private key PEM (BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY)",
            });
        };
        check_bits(setting, private.size() * 8)?;
        let der = private
            .to_pkcs1_der()
            .map_err(|source| KeyError::Pkcs1 { setting, source })?;
        Ok(Self::Rs256Private(Rs256KeyPair {
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            public: Rs256PublicKey::new(setting, private.to_public_key())?,
        }))
    }

    /// `token-rs256-pubkey-base64`: base64 of an SPKI or PKCS#1 public key PEM.
    pub fn from_rs256_pubkey_base64(value: &str) -> Result<Self, KeyError> {
        let setting = RS256_PUBKEY;
        let pem = decode_pem(setting, value)?;
        let key = if pem.contains("-----BEGIN RSA PUBLIC KEY-----") {
            RsaPublicKey::from_pkcs1_pem(&pem)
                .map_err(|source| KeyError::Pkcs1 { setting, source })?
        } else if pem.contains("-----BEGIN PUBLIC KEY-----") {
            RsaPublicKey::from_public_key_pem(&pem)
                .map_err(|source| KeyError::Spki { setting, source })?
        } else {
            return Err(KeyError::WrongPem {
                setting,
                expected: "an RSA public key PEM (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY)",
            });
        };
        check_bits(setting, key.size() * 8)?;
        Ok(Self::Rs256Public(Rs256PublicKey::new(setting, key)?))
    }

    /// `token-hs256-secret-base64`: base64 of the secret bytes.
    pub fn from_hs256_secret_base64(value: &str) -> Result<Self, KeyError> {
        let secret = decode_base64(HS256_SECRET, value)?;
        if secret.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        Ok(Self::Hs256(Hs256Secret {
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
        }))
    }

    /// A fresh 2048-bit RSA key, as the value of `token-rs256-secret-base64`
    /// (base64 of a PKCS#1 PEM, the form Attic documents). For the embedded default.
    pub fn generate_rs256() -> Result<String, KeyError> {
        let key =
            RsaPrivateKey::new(&mut rand::rngs::OsRng, MIN_RSA_BITS).map_err(KeyError::Generate)?;
        let pem = key
            .to_pkcs1_pem(LineEnding::LF)
            .map_err(|source| KeyError::Pkcs1 {
                setting: RS256_SECRET,
                source,
            })?;
        Ok(STANDARD.encode(pem.as_bytes()))
    }

    /// The algorithm this key signs and verifies.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::Rs256Private(_) | Self::Rs256Public(_) => Algorithm::RS256,
            Self::Hs256(_) => Algorithm::HS256,
        }
    }

    /// For RSA keys, the value of `token-rs256-pubkey-base64` that verifies
    /// this key's tokens (for verify-only replicas).
    pub fn rs256_pubkey_base64(&self) -> Option<String> {
        let public = match self {
            Self::Rs256Private(pair) => &pair.public,
            Self::Rs256Public(public) => public,
            Self::Hs256(_) => return None,
        };
        let pem = public.key.to_public_key_pem(LineEnding::LF).ok()?;
        Some(STANDARD.encode(pem))
    }

    pub(super) fn encoding_key(&self) -> Option<&EncodingKey> {
        match self {
            Self::Rs256Private(pair) => Some(&pair.encoding),
            Self::Rs256Public(_) => None,
            Self::Hs256(secret) => Some(&secret.encoding),
        }
    }

    pub(super) fn decoding_key(&self) -> &DecodingKey {
        match self {
            Self::Rs256Private(pair) => &pair.public.decoding,
            Self::Rs256Public(public) => &public.decoding,
            Self::Hs256(secret) => &secret.decoding,
        }
    }
}

impl Rs256PublicKey {
    fn new(setting: &'static str, key: RsaPublicKey) -> Result<Self, KeyError> {
        let der = key
            .to_pkcs1_der()
            .map_err(|source| KeyError::Pkcs1 { setting, source })?;
        Ok(Self {
            decoding: DecodingKey::from_rsa_der(der.as_bytes()),
            key,
        })
    }
}

fn check_bits(setting: &'static str, bits: usize) -> Result<(), KeyError> {
    if bits < MIN_RSA_BITS {
        return Err(KeyError::RsaTooSmall { setting, bits });
    }
    Ok(())
}

fn decode_base64(setting: &'static str, value: &str) -> Result<Vec<u8>, KeyError> {
    if value.trim_start().starts_with("-----BEGIN") {
        return Err(KeyError::RawPem { setting });
    }
    let compact: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    LENIENT_BASE64
        .decode(compact)
        .map_err(|source| KeyError::Base64 { setting, source })
}

fn decode_pem(setting: &'static str, value: &str) -> Result<String, KeyError> {
    let bytes = decode_base64(setting, value)?;
    String::from_utf8(bytes).map_err(|_| KeyError::WrongPem {
        setting,
        expected: "a PEM file (text)",
    })
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rs256Private(pair) => f.debug_tuple("Rs256Private").field(pair).finish(),
            Self::Rs256Public(public) => f.debug_tuple("Rs256Public").field(public).finish(),
            Self::Hs256(secret) => f.debug_tuple("Hs256").field(secret).finish(),
        }
    }
}

impl fmt::Debug for Rs256KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Rs256KeyPair({} bits, <redacted>)",
            self.public.key.size() * 8
        )
    }
}

impl fmt::Debug for Rs256PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rs256PublicKey({} bits)", self.key.size() * 8)
    }
}

impl fmt::Debug for Hs256Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hs256Secret(<redacted>)")
    }
}

#[cfg(test)]
#[path = "key_tests.rs"]
pub(super) mod tests;
