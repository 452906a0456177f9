//! Ed25519 signatures of store paths, as Nix makes and checks them
//! (`libstore/crypto.cc` for keys, `ValidPathInfo::fingerprint` in
//! `libstore/path-info.cc` for what is signed).
//!
//! Keys and signatures are text `<key name>:<base64>`: a secret key holds 64
//! bytes (the 32-byte seed, then the public key, as libsodium stores it), a
//! public key 32 bytes, a signature 64 bytes. The key name (e.g.
//! `cache.nixos.org-1`) is how a client picks the trusted key that checks a
//! signature. What is signed is the path's *fingerprint*:
//! `1;<path>;<nar hash>;<nar size>;<references>` with absolute paths.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{SECRET_KEY_LENGTH, Signer as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use super::hash::NarHash;
use super::store_path::{StoreDir, StorePath};

const PUBLIC_KEY_LENGTH: usize = ed25519_dalek::PUBLIC_KEY_LENGTH;
const SIGNATURE_LENGTH: usize = ed25519_dalek::SIGNATURE_LENGTH;
const KEYPAIR_LENGTH: usize = ed25519_dalek::KEYPAIR_LENGTH;

/// Why a key, signature or key name is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SigningError {
    /// An empty key name.
    #[error("key name is empty")]
    EmptyKeyName,
    /// A key name with `:`, whitespace or a control character, which would
    /// break `name:key` strings or Nix's space-separated key lists.
    #[error("key name contains invalid character {0:?}")]
    InvalidKeyNameChar(char),
    /// No `:` between name and key material.
    #[error("expected `<name>:<base64>`")]
    MissingColon,
    /// Key material that is not base64.
    #[error("invalid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// Key material of the wrong size.
    #[error("{what} must be {expected} bytes, got {actual}")]
    WrongLength {
        /// Secret key, public key or signature.
        what: &'static str,
        /// Bytes it must have.
        expected: usize,
        /// Bytes it has.
        actual: usize,
    },
    /// A secret key whose second half is not the public key of its seed.
    #[error("secret key's public half does not match its seed")]
    KeyMismatch,
    /// 32 bytes that are not an Ed25519 public key.
    #[error("not a valid ed25519 public key")]
    InvalidPublicKey,
}

/// Checks a key name: non-empty, no `:`, whitespace or control characters.
fn check_key_name(name: &str) -> Result<(), SigningError> {
    if name.is_empty() {
        return Err(SigningError::EmptyKeyName);
    }
    match name
        .chars()
        .find(|c| *c == ':' || c.is_whitespace() || c.is_control())
    {
        Some(c) => Err(SigningError::InvalidKeyNameChar(c)),
        None => Ok(()),
    }
}

/// Splits `name:base64` and decodes exactly `N` bytes.
fn parse_named<const N: usize>(
    s: &str,
    what: &'static str,
) -> Result<(String, [u8; N]), SigningError> {
    let (name, b64) = s.split_once(':').ok_or(SigningError::MissingColon)?;
    check_key_name(name)?;
    let bytes = BASE64.decode(b64)?;
    let array = bytes
        .as_slice()
        .try_into()
        .map_err(|_| SigningError::WrongLength {
            what,
            expected: N,
            actual: bytes.len(),
        })?;
    Ok((name.to_owned(), array))
}

/// A cache's secret signing key. `Debug` shows only the name and public
/// key, so the secret never reaches a log.
#[derive(Clone)]
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// A fresh key from the operating system's randomness.
    pub fn generate(name: &str) -> Result<Self, SigningError> {
        check_key_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            key: ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng),
        })
    }

    /// A key from its 32-byte Ed25519 seed (what is sealed at rest; the
    /// public half is derived from it).
    pub fn from_seed(name: &str, seed: &[u8; SECRET_KEY_LENGTH]) -> Result<Self, SigningError> {
        check_key_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(seed),
        })
    }

    /// The 32-byte seed: the secret itself. Only for sealing it at rest.
    pub fn seed(&self) -> [u8; SECRET_KEY_LENGTH] {
        self.key.to_bytes()
    }

    /// The key name signatures carry.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key, to publish as a trusted key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs a fingerprint (see [`fingerprint`]).
    pub fn sign(&self, fingerprint: &str) -> Signature {
        Signature {
            key_name: self.name.clone(),
            bytes: self.key.sign(fingerprint.as_bytes()).to_bytes(),
        }
    }

    /// The secret in Nix's format `name:base64(seed || public)`, as
    /// `nix-store --generate-binary-cache-key` writes it and Attic's
    /// `{"Keypair": …}` carries it. Deliberately not `Display`.
    pub fn export_secret(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            BASE64.encode(self.key.to_keypair_bytes())
        )
    }
}

/// Parses Nix's secret key format, checking the halves agree.
impl FromStr for SigningKey {
    type Err = SigningError;

    fn from_str(s: &str) -> Result<Self, SigningError> {
        let (name, bytes) = parse_named::<KEYPAIR_LENGTH>(s.trim_end(), "secret key")?;
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&bytes).map_err(|_| {
            // `from_keypair_bytes` fails only on a mismatch or a bad point.
            if ed25519_dalek::VerifyingKey::from_bytes(&tail(&bytes)).is_ok() {
                SigningError::KeyMismatch
            } else {
                SigningError::InvalidPublicKey
            }
        })?;
        Ok(Self { name, key })
    }
}

/// The public half stored after the seed.
fn tail(bytes: &[u8; KEYPAIR_LENGTH]) -> [u8; PUBLIC_KEY_LENGTH] {
    let mut out = [0; PUBLIC_KEY_LENGTH];
    out.copy_from_slice(&bytes[SECRET_KEY_LENGTH..]);
    out
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .field("public", &self.public_key().to_string())
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A public key `name:base64(32 bytes)`, as in Nix's `trusted-public-keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl PublicKey {
    /// The key name it checks signatures of.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `signature` is this key's signature of `fingerprint`. A
    /// signature by another key name is never valid.
    pub fn verify(&self, fingerprint: &str, signature: &Signature) -> bool {
        signature.key_name == self.name
            && self
                .key
                .verify_strict(
                    fingerprint.as_bytes(),
                    &ed25519_dalek::Signature::from_bytes(&signature.bytes),
                )
                .is_ok()
    }
}

impl FromStr for PublicKey {
    type Err = SigningError;

    fn from_str(s: &str) -> Result<Self, SigningError> {
        let (name, bytes) = parse_named::<PUBLIC_KEY_LENGTH>(s.trim(), "public key")?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| SigningError::InvalidPublicKey)?;
        Ok(Self { name, key })
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

/// A signature `name:base64(64 bytes)`, one narinfo `Sig:` line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    key_name: String,
    bytes: [u8; SIGNATURE_LENGTH],
}

impl Signature {
    /// The name of the key that made it (how upstream signatures are
    /// recognised without checking them).
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// The raw signature.
    pub fn as_bytes(&self) -> &[u8; SIGNATURE_LENGTH] {
        &self.bytes
    }
}

impl FromStr for Signature {
    type Err = SigningError;

    fn from_str(s: &str) -> Result<Self, SigningError> {
        let (key_name, bytes) = parse_named::<SIGNATURE_LENGTH>(s, "signature")?;
        Ok(Self { key_name, bytes })
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key_name, BASE64.encode(self.bytes))
    }
}

macro_rules! serde_as_string {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_as_string!(PublicKey, Signature);

/// The string a path signature covers, as Nix 2.8 computes it:
/// `1;<abs path>;sha256:<nix-base32>;<nar size>;<abs references, sorted, comma-separated>`.
/// References are sorted and deduplicated here, as Nix keeps them in a set.
pub fn fingerprint(
    store_dir: &StoreDir,
    store_path: &StorePath,
    nar_hash: &NarHash,
    nar_size: u64,
    references: &[StorePath],
) -> String {
    let mut refs: Vec<&StorePath> = references.iter().collect();
    refs.sort();
    refs.dedup();
    let refs: Vec<String> = refs.iter().map(|r| r.to_absolute(store_dir)).collect();
    format!(
        "1;{};{nar_hash};{nar_size};{}",
        store_path.to_absolute(store_dir),
        refs.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINGERPRINT: &str = "1;/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10;sha256:16mvl7v0ylzcg2n3xzjn41qhzbmgcn5iyarx16nn5l2r36n2kqci;206104;/nix/store/563528481rvhc5kxwipjmg6rqrl95mdx-glibc-2.33-56,/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10";
    const SIG: &str = "cache.nixos.org-1:lo9EfNIL4eGRuNh7DTbAAffWPpI2SlYC/8uP7JnhgmfRIUNGhSbFe8qEaKN0mFS02TuhPpXFPNtRkFcCp0hGAQ==";
    const KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

    fn hello_fingerprint(references: &[&str]) -> String {
        let refs: Vec<StorePath> = references.iter().map(|r| r.parse().unwrap()).collect();
        fingerprint(
            &StoreDir::default(),
            &"xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10"
                .parse()
                .unwrap(),
            &"sha256:16mvl7v0ylzcg2n3xzjn41qhzbmgcn5iyarx16nn5l2r36n2kqci"
                .parse()
                .unwrap(),
            206104,
            &refs,
        )
    }

    #[test]
    fn public_vector_verifies() {
        let key: PublicKey = KEY.parse().unwrap();
        let sig: Signature = SIG.parse().unwrap();
        assert_eq!(key.name(), "cache.nixos.org-1");
        assert_eq!(sig.key_name(), "cache.nixos.org-1");
        assert_eq!(key.to_string(), KEY);
        assert_eq!(sig.to_string(), SIG);
        assert!(key.verify(FINGERPRINT, &sig));
        assert!(!key.verify(&FINGERPRINT.replace("206104", "206105"), &sig));
    }

    #[test]
    fn fingerprint_matches_nix() {
        // Given in any order, with a duplicate: sorted and deduplicated.
        let fp = hello_fingerprint(&[
            "xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10",
            "563528481rvhc5kxwipjmg6rqrl95mdx-glibc-2.33-56",
            "xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10",
        ]);
        assert_eq!(fp, FINGERPRINT);
        assert!(hello_fingerprint(&[]).ends_with(";206104;"));
    }

    #[test]
    fn generate_sign_verify() {
        let key = SigningKey::generate("larder-test-1").unwrap();
        let public = key.public_key();
        let sig = key.sign(FINGERPRINT);
        assert!(public.verify(FINGERPRINT, &sig));
        assert!(!public.verify(&FINGERPRINT.replace("206104", "206105"), &sig));
        assert_eq!(sig.to_string().parse::<Signature>().unwrap(), sig);

        let other = SigningKey::generate("larder-test-1").unwrap();
        assert!(!other.public_key().verify(FINGERPRINT, &sig));
        // Same key material under another name does not verify either.
        let renamed: PublicKey = public
            .to_string()
            .replace("larder-test-1", "other")
            .parse()
            .unwrap();
        assert!(!renamed.verify(FINGERPRINT, &sig));
        let cache_key: PublicKey = KEY.parse().unwrap();
        assert!(!cache_key.verify(FINGERPRINT, &sig));
    }

    #[test]
    fn tampered_signature_fails() {
        let key: PublicKey = KEY.parse().unwrap();
        let mut bytes = *SIG.parse::<Signature>().unwrap().as_bytes();
        bytes[10] ^= 1;
        let tampered: Signature = format!("cache.nixos.org-1:{}", BASE64.encode(bytes))
            .parse()
            .unwrap();
        assert!(!key.verify(FINGERPRINT, &tampered));
    }

    #[test]
    fn secret_key_round_trip() {
        let key = SigningKey::generate("cache.example.org-1").unwrap();
        let secret = key.export_secret();
        assert!(secret.starts_with("cache.example.org-1:"));
        let raw = BASE64.decode(secret.split_once(':').unwrap().1).unwrap();
        assert_eq!(raw.len(), 64);
        let back: SigningKey = secret.parse().unwrap();
        assert_eq!(back.public_key(), key.public_key());
        assert_eq!(back.sign("x"), key.sign("x"));
        // Files written by `nix-store --generate-binary-cache-key` may end in a newline.
        assert!(format!("{secret}\n").parse::<SigningKey>().is_ok());
    }

    #[test]
    fn debug_redacts_secret() {
        let key = SigningKey::generate("k").unwrap();
        let debug = format!("{key:?}");
        let secret_b64 = key.export_secret().split_once(':').unwrap().1.to_owned();
        assert!(debug.contains("<redacted>"));
        assert!(debug.contains(&key.public_key().to_string()));
        assert!(!debug.contains(&secret_b64[..20]));
    }

    #[test]
    fn rejects_bad_keys() {
        assert!(matches!(
            SigningKey::generate(""),
            Err(SigningError::EmptyKeyName)
        ));
        assert!(matches!(
            SigningKey::generate("a:b"),
            Err(SigningError::InvalidKeyNameChar(':'))
        ));
        assert!(matches!(
            SigningKey::generate("a b"),
            Err(SigningError::InvalidKeyNameChar(' '))
        ));
        assert_eq!(
            "nocolon".parse::<PublicKey>(),
            Err(SigningError::MissingColon)
        );
        assert_eq!(
            ":6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=".parse::<PublicKey>(),
            Err(SigningError::EmptyKeyName)
        );
        assert!(matches!(
            "k:!!!".parse::<PublicKey>(),
            Err(SigningError::Base64(_))
        ));
        assert_eq!(
            "k:AAAA".parse::<PublicKey>(),
            Err(SigningError::WrongLength {
                what: "public key",
                expected: 32,
                actual: 3
            })
        );
        assert!(matches!(
            KEY.parse::<SigningKey>(),
            Err(SigningError::WrongLength {
                what: "secret key",
                ..
            })
        ));
        assert!(matches!(
            "k:AAAA".parse::<Signature>(),
            Err(SigningError::WrongLength {
                what: "signature",
                ..
            })
        ));

        // A secret key whose public half belongs to another key.
        let a = SigningKey::generate("k").unwrap();
        let b = SigningKey::generate("k").unwrap();
        let mut raw = a.key.to_keypair_bytes();
        raw[32..].copy_from_slice(b.key.verifying_key().as_bytes());
        assert_eq!(
            format!("k:{}", BASE64.encode(raw))
                .parse::<SigningKey>()
                .unwrap_err(),
            SigningError::KeyMismatch
        );
    }

    #[test]
    fn serde_as_strings() {
        let key: PublicKey = KEY.parse().unwrap();
        assert_eq!(serde_json::to_string(&key).unwrap(), format!("\"{KEY}\""));
        assert_eq!(
            serde_json::from_str::<PublicKey>(&format!("\"{KEY}\"")).unwrap(),
            key
        );
        let sig: Signature = SIG.parse().unwrap();
        assert_eq!(
            serde_json::from_str::<Signature>(&serde_json::to_string(&sig).unwrap()).unwrap(),
            sig
        );
    }
}
