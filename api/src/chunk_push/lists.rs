//! Chunk lists the server was asked about recently, by
//! [`larder_core::wire::chunk_push::chunk_list_hash`], so that a commit (or a
//! prepare) right after the question names the list instead of sending it
//! a second time: on a near-empty update, the lists are most of what a
//! push sends.
//!
//! Memory only, per replica, and bounded ([`MAX_HASHES`], oldest first out):
//! a commit naming a list this replica forgot (restarted, evicted, another
//! replica asked) is `409 ChunkListUnknown`, and the client lists its
//! chunks. A list names no secret (its id is its content's hash and the
//! commit checks presence for its own caller as ever), so lists are shared
//! between callers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use larder_core::chunk::ChunkHash;
use larder_core::wire::chunk_push::chunk_list_hash;

use crate::error::{ApiError, ApiResult};

/// Most hashes remembered (32 MiB of them).
pub const MAX_HASHES: usize = 1 << 20;

/// The remembered lists.
#[derive(Debug, Default)]
pub struct ChunkLists {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    lists: HashMap<ChunkHash, Arc<[ChunkHash]>>,
    /// Ids, oldest first.
    order: VecDeque<ChunkHash>,
    /// Hashes in `lists`.
    hashes: usize,
}

impl ChunkLists {
    /// Remembers `hashes` under their id, forgetting the oldest lists to
    /// stay under [`MAX_HASHES`].
    pub fn remember(&self, hashes: &[ChunkHash]) {
        if hashes.is_empty() || hashes.len() > MAX_HASHES {
            return;
        }
        let id = chunk_list_hash(hashes);
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.lists.contains_key(&id) {
            return;
        }
        while inner.hashes + hashes.len() > MAX_HASHES {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(list) = inner.lists.remove(&old) {
                inner.hashes -= list.len();
            }
        }
        inner.hashes += hashes.len();
        inner.order.push_back(id);
        inner.lists.insert(id, hashes.into());
    }

    /// The lists named by `ids`, concatenated; `409 ChunkListUnknown`
    /// naming the first id not remembered.
    pub fn resolve(&self, ids: &[ChunkHash]) -> ApiResult<Vec<ChunkHash>> {
        let inner = self
            .inner
            .lock()
            .map_err(|_| ApiError::Internal("chunk lists poisoned".into()))?;
        let mut out = Vec::new();
        for id in ids {
            let list = inner.lists.get(id).ok_or(ApiError::ChunkListUnknown(*id))?;
            out.extend_from_slice(list);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_remembered_resolved_and_evicted() {
        let lists = ChunkLists::default();
        let a: Vec<ChunkHash> = (0..3u8).map(|i| ChunkHash::of(&[i])).collect();
        let b = vec![ChunkHash::of(b"b")];
        lists.remember(&a);
        lists.remember(&b);
        let ids = [chunk_list_hash(&a), chunk_list_hash(&b)];
        let both = lists.resolve(&ids).unwrap();
        assert_eq!(both, [a.clone(), b.clone()].concat());
        let unknown = [ChunkHash::from_slice(&[0; 32]).unwrap()];
        assert!(matches!(
            lists.resolve(&unknown),
            Err(ApiError::ChunkListUnknown(id)) if id == unknown[0]
        ));

        let big: Vec<ChunkHash> = vec![ChunkHash::of(b"x"); MAX_HASHES - 1];
        lists.remember(&big);
        assert!(lists.resolve(&ids[..1]).is_err(), "oldest out");
        assert!(lists.resolve(&ids[1..]).is_ok());
        assert!(lists.resolve(&[chunk_list_hash(&big)]).is_ok());
    }
}
