//! What every job needs, built once per process.

use std::sync::Arc;

use larder_shared::chunk_store::ChunkStore;
use larder_shared::chunk_store::packer::Packer;
use larder_shared::config::Config;
use larder_shared::db::Db;
use larder_shared::storage::Storage;

use crate::jobs::ingest::group_queue::{GroupCommit, GroupCommitCounts};

/// Shared handles for job handlers; cheap to clone.
#[derive(Clone)]
pub struct Services {
    /// Configuration, loaded once.
    pub config: Arc<Config>,
    /// Metadata.
    pub db: Db,
    /// The main backend: chunk objects and uploaded NAR files. Chunk bytes
    /// go through [`Services::chunks`].
    pub storage: Arc<dyn Storage>,
    /// Staged uploads (the storage backend, or `[staging] path`).
    pub staging: Arc<dyn Storage>,
    /// The process's shared pack, which small ingests join.
    pub packer: Arc<Packer>,
    /// The runs of shared packs waiting to commit together.
    pub(crate) group_commit: Arc<GroupCommit>,
}

impl Services {
    /// The handles of one process (its shared pack included).
    pub fn new(
        config: Arc<Config>,
        db: Db,
        storage: Arc<dyn Storage>,
        staging: Arc<dyn Storage>,
    ) -> Self {
        let packer = Packer::new(storage.clone(), db.clone(), config.storage.pack_size);
        Self {
            config,
            db,
            storage,
            staging,
            packer,
            group_commit: Arc::default(),
        }
    }

    /// What this process's group commits of small ingests did so far.
    pub fn group_commits(&self) -> GroupCommitCounts {
        self.group_commit.counts()
    }

    /// The chunk store on the main backend: the only way to chunk bytes.
    pub fn chunks(&self) -> ChunkStore {
        ChunkStore::new(self.storage.clone())
    }
}
