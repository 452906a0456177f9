//! Which chunks a push may take as already sent: the no-oracle rule
//! (docs/protocol.md "Chunk-level push", "No cross-tenant oracle").
//!
//! A chunk counts as present only if the caller could read it anyway:
//! - it is in a ready NAR of an earlier version of the same package in the
//!   target cache, and the caller may pull from that cache (a public cache,
//!   or `r`); or
//! - the same pusher (token subject) sent it to the same cache and it has
//!   not expired ([`larder_shared::db::pushed_chunks`]): what an
//!   interrupted push resumes from, and what the NARs of one push share.
//!
//! Never because some other cache, or somebody else's unfinished push,
//! holds it. The same answer decides what a commit may reference, so a
//! commit cannot borrow a chunk the caller was told to send.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use larder_core::chunk::ChunkHash;
use larder_core::nix::store_path::StorePath;
use larder_shared::db::caches::CacheRecord;
use larder_shared::db::chunks::{self, BATCH, ChunkRecord};
use larder_shared::db::pushed_chunks::{self, PushedChunk};
use larder_shared::db::{CacheId, ChunkId, Db, nar_candidates};

use crate::error::{ApiError, ApiResult};

/// How many earlier paths of the package are searched.
const CANDIDATE_PATHS: i64 = 16;

/// Where a present chunk's bytes are.
#[derive(Debug, Clone)]
pub enum Source {
    /// In the chunk store (a ready NAR of the cache lists it).
    Stored(ChunkRecord),
    /// In a batch this pusher sent.
    Pushed(PushedChunk),
}

impl Source {
    /// The chunk's uncompressed size, as its row says; 0 for a row out of
    /// range, which no NAR's chunk list then fits.
    pub fn size(&self) -> u32 {
        match self {
            Source::Stored(rec) => u32::try_from(rec.chunk_size).unwrap_or(0),
            Source::Pushed(p) => u32::try_from(p.chunk_size).unwrap_or(0),
        }
    }
}

/// Who asks, and about which path.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    /// The target cache.
    pub cache: &'a CacheRecord,
    /// Whether the caller may pull from it.
    pub may_read: bool,
    /// The token's subject.
    pub pusher: &'a str,
    /// The path the chunks belong to.
    pub path: &'a StorePath,
}

/// The package name of a store path name, as Nix's `parseDrvName` splits
/// it: everything before the first `-` followed by a non-letter.
pub fn package_name(name: &str) -> &str {
    let bytes = name.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'-' && bytes.get(i + 1).is_some_and(|c| !c.is_ascii_alphabetic()) {
            return &name[..i];
        }
    }
    name
}

/// The chunks of `hashes` that count as present for `asker`, with where
/// their bytes are. Duplicates in `hashes` are fine.
pub async fn present(
    db: &Db,
    asker: Asker<'_>,
    hashes: &[ChunkHash],
) -> ApiResult<HashMap<ChunkHash, Source>> {
    Presence::load(db, asker).await?.find(hashes).await
}

/// The presence question for one asker, owned, with the chunks of the
/// package's earlier versions loaded once: a streamed prepare asks it for
/// every piece of its chunk list.
#[derive(Debug, Clone)]
pub struct Presence {
    db: Db,
    cache: CacheId,
    pusher: String,
    /// Chunk ids of the cache's ready NARs of the package's earlier paths
    /// (empty unless the asker may pull from the cache).
    readable: Arc<HashSet<ChunkId>>,
}

impl Presence {
    /// Loads what `asker` may read.
    pub async fn load(db: &Db, asker: Asker<'_>) -> ApiResult<Self> {
        let readable = if asker.may_read {
            let mut conn = db.conn().await?;
            let name = package_name(asker.path.name.as_str());
            nar_candidates::chunk_ids(conn.raw(), asker.cache.id, name, CANDIDATE_PATHS).await?
        } else {
            HashSet::new()
        };
        Ok(Self {
            db: db.clone(),
            cache: asker.cache.id,
            pusher: asker.pusher.to_owned(),
            readable: Arc::new(readable),
        })
    }

    /// The chunks of `hashes` that count as present, with where their
    /// bytes are. Duplicates in `hashes` are fine.
    pub async fn find(&self, hashes: &[ChunkHash]) -> ApiResult<HashMap<ChunkHash, Source>> {
        let mut found = HashMap::new();
        let mut unique: Vec<ChunkHash> = hashes.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let mut conn = self.db.conn().await?;
        if !self.readable.is_empty() {
            for batch in unique.chunks(BATCH) {
                for (hash, rec) in chunks::find_by_hashes(conn.raw(), batch).await? {
                    // A chunk GC is deleting (refcount < 0) is not reused.
                    if rec.refcount >= 0 && self.readable.contains(&rec.id) {
                        found.insert(hash, Source::Stored(rec));
                    }
                }
            }
        }
        let rest: Vec<ChunkHash> = unique
            .into_iter()
            .filter(|h| !found.contains_key(h))
            .collect();
        for batch in rest.chunks(BATCH - 2) {
            let pushed = pushed_chunks::find(conn.raw(), self.cache, &self.pusher, batch).await?;
            found.extend(pushed.into_iter().map(|(h, p)| (h, Source::Pushed(p))));
        }
        Ok(found)
    }

    /// Where each of `hashes`' bytes are, in order; `409 ChunksMissing`
    /// (how many, the first) if any of them is not present.
    pub async fn sources(&self, hashes: &[ChunkHash]) -> ApiResult<Vec<Source>> {
        let found = self.find(hashes).await?;
        let mut absent = hashes.iter().filter(|h| !found.contains_key(*h));
        if let Some(first) = absent.next() {
            return Err(ApiError::ChunksMissing {
                count: 1 + absent.count(),
                first: first.to_string(),
            });
        }
        Ok(hashes
            .iter()
            .filter_map(|h| found.get(h).cloned())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::package_name;

    #[test]
    fn package_names() {
        assert_eq!(package_name("hello-2.10"), "hello");
        assert_eq!(package_name("larder-dep"), "larder-dep");
        assert_eq!(package_name("glibc-2.33-56"), "glibc");
        assert_eq!(package_name("foo-bar-1.0-dev"), "foo-bar");
        assert_eq!(package_name("plain"), "plain");
    }
}
