//! Attic rows validated as Larder needs them: a cache as a cache, an
//! object as an upload would be.

use larder_core::CacheName;
use larder_core::nix::hash::NarHash;
use larder_core::nix::signing::SigningKey;
use larder_core::nix::store_path::{AbsoluteStorePath, StoreDir, StorePath, StorePathHash};
use larder_shared::db::objects::ObjectMeta;

use super::attic_db::{AtticCache, AtticObject};

/// An Attic cache, validated as Larder needs it.
pub(super) struct ParsedCache {
    pub(super) name: CacheName,
    pub(super) key: SigningKey,
    pub(super) store_dir: StoreDir,
    pub(super) upstream: Vec<String>,
}

pub(super) fn parse_cache(c: &AtticCache) -> Result<ParsedCache, String> {
    let name: CacheName = c.name.parse().map_err(|e| format!("cache name: {e}"))?;
    let key = c
        .keypair
        .parse::<SigningKey>()
        .map_err(|e| format!("keypair: {e}"))?;
    let store_dir = c
        .store_dir
        .parse::<StoreDir>()
        .map_err(|e| format!("store_dir: {e}"))?;
    let upstream: Vec<String> = serde_json::from_str(&c.upstream_cache_key_names)
        .map_err(|e| format!("upstream_cache_key_names: {e}"))?;
    Ok(ParsedCache {
        name,
        key,
        store_dir,
        upstream,
    })
}

/// An Attic object, validated as an upload would be.
pub(super) struct ParsedObject {
    pub(super) hash: StorePathHash,
    pub(super) meta: ObjectMeta,
    pub(super) nar_hash: NarHash,
    pub(super) nar_size: u64,
}

pub(super) fn parse_object(o: &AtticObject) -> Result<ParsedObject, String> {
    let hash: StorePathHash = o
        .store_path_hash
        .parse()
        .map_err(|e| format!("store_path_hash: {e}"))?;
    let (dir, base) = o
        .store_path
        .rsplit_once('/')
        .ok_or_else(|| format!("store path {:?} is not absolute", o.store_path))?;
    let dir: StoreDir = dir.parse().map_err(|e| format!("store dir: {e}"))?;
    let path = StorePath::from_base_name(base).map_err(|e| format!("store path: {e}"))?;
    if path.hash != hash {
        return Err("store_path_hash does not match store_path".into());
    }
    let references: Vec<String> =
        serde_json::from_str(&o.references).map_err(|e| format!("references: {e}"))?;
    let references = references
        .iter()
        .map(|r| StorePath::from_base_name(r).map_err(|e| format!("reference {r:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let sigs: Vec<String> = serde_json::from_str(&o.sigs).map_err(|e| format!("sigs: {e}"))?;
    if sigs
        .iter()
        .any(|s| s.is_empty() || s.contains(char::is_whitespace))
    {
        return Err("a signature is empty or contains whitespace".into());
    }
    // Attic keeps the deriver as Nix sent it: a base name (or a full path).
    let deriver = o
        .deriver
        .as_deref()
        .filter(|d| !d.is_empty())
        .map(|d| {
            let base = d.rsplit('/').next().unwrap_or(d);
            StorePath::from_base_name(base).map_err(|e| format!("deriver {base:?}: {e}"))
        })
        .transpose()?;
    for (field, v) in [("system", &o.system), ("ca", &o.ca)] {
        if v.as_deref().is_some_and(|v| v.contains(['\n', '\r'])) {
            return Err(format!("{field} contains a line break"));
        }
    }
    let nar_hash: NarHash = o.nar_hash.parse().map_err(|e| format!("nar_hash: {e}"))?;
    let nar_size = u64::try_from(o.nar_size)
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("nar_size {} is not positive", o.nar_size))?;
    Ok(ParsedObject {
        hash,
        meta: ObjectMeta {
            store_path: AbsoluteStorePath::new(dir, path),
            references,
            deriver,
            sigs,
            ca: o.ca.clone(),
            system: o.system.clone(),
        },
        nar_hash,
        nar_size,
    })
}
