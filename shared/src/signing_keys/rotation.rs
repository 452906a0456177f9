//! Adding a signing key to a cache: at creation, on `--regenerate-keypair`
//! (Attic's `{"keypair": "Generate"}`), on import of a keypair, or for a
//! key file. A generated key of an existing cache gets a new name
//! (`<cache>-2`, `<cache>-3`, …): Nix picks the trusted key by name, so a
//! host trusting the old key still checks the old key's signature. The
//! older keys keep signing until `retire_at` (now + `[signing]
//! rotation-overlap`, or now for `--no-overlap`).

use std::path::Path;

use super::ring::read_key_file;
use super::{Kek, KeyError};
use crate::db::cache_keys::{self, CacheKeyRecord, KeySecret};
use crate::db::{CacheId, Tx};
use larder_core::CacheName;
use larder_core::nix::signing::SigningKey;

/// Where the new key comes from.
#[derive(Debug)]
pub enum NewKey<'a> {
    /// A fresh Ed25519 key, named by [`next_key_name`].
    Generate,
    /// A given key (its own name), sealed with the KEK.
    Import(Box<SigningKey>),
    /// A Nix secret key file on the server; only its path is stored.
    File(&'a Path),
}

/// The name of a cache's next generated key: the cache name for its first,
/// then `<cache>-N` with N one past the highest N used so far (at least 2).
pub fn next_key_name(cache: &CacheName, existing: &[CacheKeyRecord]) -> String {
    if existing.is_empty() {
        return cache.to_string();
    }
    let prefix = format!("{cache}-");
    let highest = existing
        .iter()
        .filter_map(|k| k.key_name.strip_prefix(&prefix)?.parse::<u64>().ok())
        .max()
        .unwrap_or(1);
    format!("{cache}-{}", highest.max(1) + 1)
}

/// Adds `new` as the cache's newest key and retires the older ones at
/// `retire_at` (keeping earlier retirements); secrets of keys retired by
/// `now` are cleared in the same transaction. Returns the new row.
pub async fn add_key(
    tx: &mut Tx,
    kek: &Kek,
    cache: &CacheName,
    cache_id: CacheId,
    new: NewKey<'_>,
    retire_at: i64,
    now: i64,
) -> Result<CacheKeyRecord, KeyError> {
    let existing = cache_keys::of_cache(tx.raw(), cache_id).await?;
    let (name, public, secret) = match new {
        NewKey::Generate => {
            let key =
                SigningKey::generate(&next_key_name(cache, &existing)).map_err(KeyError::Name)?;
            let sealed = kek.seal(cache.as_str(), &key)?;
            (
                key.name().to_owned(),
                key.public_key().to_string(),
                Stored::Sealed(sealed),
            )
        }
        NewKey::Import(key) => {
            let sealed = kek.seal(cache.as_str(), &key)?;
            (
                key.name().to_owned(),
                key.public_key().to_string(),
                Stored::Sealed(sealed),
            )
        }
        NewKey::File(path) => {
            let key = read_key_file(path)?;
            let file = path.to_string_lossy().into_owned();
            (
                key.name().to_owned(),
                key.public_key().to_string(),
                Stored::File(file),
            )
        }
    };
    if existing.iter().any(|k| k.key_name == name) {
        return Err(KeyError::NameTaken(name));
    }
    let secret = match &secret {
        Stored::Sealed(s) => KeySecret::Sealed(s),
        Stored::File(f) => KeySecret::File(f),
    };
    let row = cache_keys::insert(tx.raw(), cache_id, &name, &public, secret, now)
        .await?
        .ok_or_else(|| KeyError::NameTaken(name.clone()))?;
    cache_keys::retire_older(tx.raw(), cache_id, row.id, retire_at).await?;
    cache_keys::forget_retired(tx.raw(), now).await?;
    Ok(row)
}

enum Stored {
    Sealed(String),
    File(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str) -> CacheKeyRecord {
        CacheKeyRecord {
            id: 1,
            cache_id: CacheId(1),
            key_name: name.into(),
            public_key: String::new(),
            secret: None,
            key_file: None,
            created_at: 0,
            retires_at: None,
        }
    }

    #[test]
    fn key_names_count_up() {
        let c: CacheName = "demo".parse().unwrap();
        assert_eq!(next_key_name(&c, &[]), "demo");
        assert_eq!(next_key_name(&c, &[row("demo")]), "demo-2");
        assert_eq!(next_key_name(&c, &[row("demo-2"), row("demo")]), "demo-3");
        assert_eq!(next_key_name(&c, &[row("imported-1")]), "demo-2");
        assert_eq!(next_key_name(&c, &[row("demo-7"), row("demo-x")]), "demo-8");
        let c: CacheName = "ci-2".parse().unwrap();
        assert_eq!(next_key_name(&c, &[row("ci-2")]), "ci-2-2");
    }
}
