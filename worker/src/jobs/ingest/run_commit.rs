//! What a finished run hands to its commit (alone, `commit`, or with the
//! other runs of its shared pack, `group_commit`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use larder_shared::chunk::ChunkHash;
use larder_shared::chunk_store::pack_writer::SealedPack;
use larder_shared::db::chunks::NewChunk;
use larder_shared::db::{ChunkId, NarId};
use larder_shared::storage::ObjectKey;

/// A chunk's place in the NAR: known id, or new (id assigned at flush).
pub(crate) enum Slot {
    Known(ChunkId),
    New(ChunkHash),
}

/// What a run hands to its commit.
pub(crate) struct RunCommit {
    /// The owner of the run's write intents, and how many it recorded.
    pub(crate) owner: Arc<str>,
    pub(crate) intents: u64,
    pub(crate) nar_id: NarId,
    /// The NAR's staged copy.
    pub(crate) staged: ObjectKey,
    /// The NAR's chunks, in order.
    pub(crate) slots: Vec<Slot>,
    /// Its new chunks, by hash (each placed once).
    pub(crate) new: HashMap<ChunkHash, NewChunk>,
    /// The packs it placed new chunks in, sealed.
    pub(crate) sealed: BTreeMap<i64, SealedPack>,
}
