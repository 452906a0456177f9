//! Narinfo signatures already made, so each (object, key) is signed once
//! rather than on every read: a signature covers the fingerprint (store
//! path, NAR hash and size, references) and nothing else, so it holds as
//! long as the key does. Keyed by the key's row id (a row's secret never
//! changes; rotation adds rows) and the SHA-256 of the fingerprint.

use std::sync::{Mutex, PoisonError};

use hashlink::LruCache;
use sha2::{Digest, Sha256};

use larder_shared::signing_keys::ActiveKey;

/// Signatures remembered; about 150 bytes each, so a few megabytes.
pub const CAPACITY: usize = 16 * 1024;

/// (key row id, fingerprint digest) → `Sig:` value.
pub struct NarinfoSignatures {
    sigs: Mutex<LruCache<(i64, [u8; 32]), String>>,
}

impl Default for NarinfoSignatures {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl std::fmt::Debug for NarinfoSignatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NarinfoSignatures").finish_non_exhaustive()
    }
}

impl NarinfoSignatures {
    /// A cache of at most `capacity` signatures.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            sigs: Mutex::new(LruCache::new(capacity.max(1))),
        }
    }

    /// `key`'s signature of `fingerprint`, made once.
    pub fn sign(&self, key: &ActiveKey, fingerprint: &str) -> String {
        let id = (key.row_id, Sha256::digest(fingerprint.as_bytes()).into());
        if let Some(sig) = self.lock().get(&id) {
            return sig.clone();
        }
        let sig = key.key.sign(fingerprint).to_string();
        self.lock().insert(id, sig.clone());
        sig
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<(i64, [u8; 32]), String>> {
        // Inserts and lookups leave the map whole if they panic.
        self.sigs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use larder_core::nix::signing::SigningKey;

    use super::*;

    fn key(row_id: i64, name: &str) -> ActiveKey {
        ActiveKey {
            row_id,
            key: Arc::new(SigningKey::generate(name).unwrap()),
        }
    }

    #[test]
    fn signs_once_per_key_and_fingerprint() {
        let sigs = NarinfoSignatures::default();
        let a = key(1, "demo");
        let first = sigs.sign(&a, "1;/nix/store/x;sha256:y;1;");
        assert_eq!(first, a.key.sign("1;/nix/store/x;sha256:y;1;").to_string());
        assert_eq!(sigs.sign(&a, "1;/nix/store/x;sha256:y;1;"), first);
        // Another fingerprint, another key: other signatures.
        assert_ne!(sigs.sign(&a, "1;/nix/store/z;sha256:y;1;"), first);
        let b = key(2, "demo-2");
        assert!(
            sigs.sign(&b, "1;/nix/store/x;sha256:y;1;")
                .starts_with("demo-2:")
        );
    }
}
