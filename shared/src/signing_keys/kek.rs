//! The key-encryption key (KEK): 32 random bytes that seal every cache's
//! secret signing key in the database (XChaCha20-Poly1305).
//!
//! Sealed text is `v1:` + base64(24-byte nonce || ciphertext || tag). The
//! plaintext is the key's 32-byte Ed25519 seed (the public half is derived),
//! and the associated data names the cache and the key name, so a sealed
//! key copied to another cache's row, or renamed, no longer opens. A fresh
//! random nonce per seal: XChaCha's 192-bit nonces make collisions
//! negligible without a counter to keep.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;

use super::KeyError;
use crate::config::SigningConfig;
use larder_core::nix::signing::SigningKey;

/// Version prefix of sealed keys; a future format gets `v2:`.
const SEALED_V1: &str = "v1:";
const NONCE_LEN: usize = 24;
/// Domain separation: these bytes open only as a Larder cache key.
const AD_PREFIX: &[u8] = b"larder cache signing key v1\0";

/// Where the KEK comes from, named in errors.
pub const KEK_FILE_KEY: &str = "[signing] key-encryption-key-file";
/// The environment variable holding the KEK text itself.
pub const KEK_ENV: &str = "LARDER_SIGNING_KEK";

/// The key-encryption key. `Debug` never shows it.
#[derive(Clone)]
pub struct Kek {
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

impl Kek {
    /// Parses the KEK text: base64 or hex of 32 bytes, surrounding
    /// whitespace ignored.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).map_err(|_| KeyError::BadKek)?
        } else {
            BASE64.decode(t).map_err(|_| KeyError::BadKek)?
        };
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::BadKek)?;
        Ok(Self {
            cipher: XChaCha20Poly1305::new(&key.into()),
        })
    }

    /// The KEK the config names: `LARDER_SIGNING_KEK` (applied to the config
    /// as an override) or `[signing] key-encryption-key-file`; `None` if
    /// neither is set.
    pub fn from_config(config: &SigningConfig) -> Result<Option<Self>, KeyError> {
        if let Some(text) = &config.key_encryption_key {
            return Self::parse(text.expose()).map(Some);
        }
        match &config.key_encryption_key_file {
            Some(path) => Self::read_file(path).map(Some),
            None => Ok(None),
        }
    }

    /// Like [`Kek::from_config`], but a missing KEK is an error naming both
    /// ways to give one (what `larder-api` needs to start).
    pub fn require(config: &SigningConfig) -> Result<Self, KeyError> {
        Self::from_config(config)?.ok_or(KeyError::NoKek)
    }

    /// Reads a KEK file, refusing one that group or others may read.
    pub fn read_file(path: &Path) -> Result<Self, KeyError> {
        let text = read_private(path)?;
        Self::parse(&text).map_err(|_| KeyError::BadKekFile(path.to_owned()))
    }

    /// Creates a KEK file with 32 fresh random bytes (base64, mode 0600)
    /// unless it exists; the embedded default calls this on first start.
    pub fn create_file_if_missing(path: &Path) -> std::io::Result<bool> {
        if path.exists() {
            return Ok(false);
        }
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let text = format!("{}\n", BASE64.encode(key));
        crate::config::write_private(path, text.as_bytes())?;
        Ok(true)
    }

    /// Seals a signing key for `cache`; see the module doc for the format.
    pub fn seal(&self, cache: &str, key: &SigningKey) -> Result<String, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ad = associated_data(cache, key.name());
        let seed = key.seed();
        let ct = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &seed[..],
                    aad: &ad,
                },
            )
            .map_err(|_| KeyError::Seal)?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        Ok(format!("{SEALED_V1}{}", BASE64.encode(blob)))
    }

    /// Opens what [`Kek::seal`] made for the same cache and key name. A wrong
    /// KEK, another cache or key name, or any changed byte is an error.
    pub fn open(&self, cache: &str, key_name: &str, sealed: &str) -> Result<SigningKey, KeyError> {
        let failed = || KeyError::Open {
            cache: cache.to_owned(),
            key_name: key_name.to_owned(),
        };
        let b64 = sealed.strip_prefix(SEALED_V1).ok_or_else(failed)?;
        let blob = BASE64.decode(b64).map_err(|_| failed())?;
        if blob.len() <= NONCE_LEN {
            return Err(failed());
        }
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| failed())?;
        let ad = associated_data(cache, key_name);
        let seed = self
            .cipher
            .decrypt(&XNonce::from(nonce), Payload { msg: ct, aad: &ad })
            .map_err(|_| failed())?;
        let seed: [u8; 32] = seed.as_slice().try_into().map_err(|_| failed())?;
        SigningKey::from_seed(key_name, &seed).map_err(|_| failed())
    }
}

/// Whether stored text is a sealed key of a format this build reads.
pub fn is_sealed(text: &str) -> bool {
    text.starts_with(SEALED_V1)
}

fn associated_data(cache: &str, key_name: &str) -> Vec<u8> {
    let mut ad = AD_PREFIX.to_vec();
    ad.extend_from_slice(cache.as_bytes());
    ad.push(0);
    ad.extend_from_slice(key_name.as_bytes());
    ad
}

/// Reads a secret file (KEK or signing key), refusing a file group or
/// others may read: a secret readable by every local user is not one.
pub fn read_private(path: &Path) -> Result<String, KeyError> {
    let io = |source| KeyError::File {
        path: path.to_owned(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::FileMode {
                path: path.to_owned(),
                mode: mode & 0o777,
            });
        }
    }
    std::fs::read_to_string(path).map_err(io)
}

/// A KEK file beside the config of the embedded default.
pub fn default_kek_path(data_dir: &Path) -> PathBuf {
    data_dir.join("signing.kek")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek() -> Kek {
        Kek::parse(&BASE64.encode([7u8; 32])).unwrap()
    }

    #[test]
    fn seal_open_round_trip() {
        let key = SigningKey::generate("demo-2").unwrap();
        let sealed = kek().seal("demo", &key).unwrap();
        assert!(is_sealed(&sealed));
        let opened = kek().open("demo", "demo-2", &sealed).unwrap();
        assert_eq!(opened.export_secret(), key.export_secret());
    }

    #[test]
    fn sealed_text_holds_no_key_bytes() {
        let key = SigningKey::generate("demo").unwrap();
        let secret = key.export_secret();
        let b64 = secret.split_once(':').unwrap().1;
        let sealed = kek().seal("demo", &key).unwrap();
        assert!(!sealed.contains(b64));
        assert!(!sealed.contains(&BASE64.encode(key.seed())));
        // Fresh nonce each time: the same key seals differently.
        assert_ne!(sealed, kek().seal("demo", &key).unwrap());
    }

    #[test]
    fn wrong_kek_fails() {
        let key = SigningKey::generate("demo").unwrap();
        let sealed = kek().seal("demo", &key).unwrap();
        let other = Kek::parse(&hex::encode([8u8; 32])).unwrap();
        assert!(matches!(
            other.open("demo", "demo", &sealed),
            Err(KeyError::Open { .. })
        ));
    }

    #[test]
    fn swapped_cache_or_key_name_fails() {
        let key = SigningKey::generate("demo").unwrap();
        let sealed = kek().seal("demo", &key).unwrap();
        assert!(kek().open("other", "demo", &sealed).is_err());
        assert!(kek().open("demo", "demo-2", &sealed).is_err());
        // The separator keeps ("ab", "c") apart from ("a", "bc").
        let k = SigningKey::generate("c").unwrap();
        let s = kek().seal("ab", &k).unwrap();
        assert!(kek().open("a", "bc", &s).is_err());
    }

    #[test]
    fn tampering_fails() {
        let key = SigningKey::generate("demo").unwrap();
        let sealed = kek().seal("demo", &key).unwrap();
        let mut blob = BASE64.decode(&sealed[3..]).unwrap();
        for i in [0, NONCE_LEN, blob.len() - 1] {
            blob[i] ^= 1;
            let t = format!("v1:{}", BASE64.encode(&blob));
            assert!(kek().open("demo", "demo", &t).is_err(), "byte {i}");
            blob[i] ^= 1;
        }
        assert!(kek().open("demo", "demo", "v1:").is_err());
        assert!(kek().open("demo", "demo", "v2:AAAA").is_err());
        assert!(
            kek()
                .open("demo", "demo", &sealed[..sealed.len() - 4])
                .is_err()
        );
    }

    #[test]
    fn kek_text_must_be_32_bytes() {
        assert!(Kek::parse(&BASE64.encode([1u8; 31])).is_err());
        assert!(Kek::parse("not base64!").is_err());
        assert!(Kek::parse(&format!("  {}\n", hex::encode([1u8; 32]))).is_ok());
    }

    #[test]
    fn debug_redacts() {
        assert_eq!(format!("{:?}", kek()), "Kek(<redacted>)");
    }

    #[cfg(unix)]
    #[test]
    fn kek_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = default_kek_path(dir.path());
        assert!(Kek::create_file_if_missing(&path).unwrap());
        assert!(!Kek::create_file_if_missing(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        Kek::read_file(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Kek::read_file(&path).unwrap_err();
        assert!(
            matches!(err, KeyError::FileMode { mode: 0o644, .. }),
            "{err}"
        );
    }
}
