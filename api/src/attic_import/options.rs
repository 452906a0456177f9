//! What an import run is asked to do, and where its paths go.

use std::sync::Arc;

use larder_shared::db::Db;
use larder_shared::signing_keys::Kek;
use larder_shared::storage::Storage;

/// What to import.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only these caches (all when empty).
    pub caches: Vec<String>,
    /// Read everything, write nothing, say what would happen.
    pub dry_run: bool,
    /// Stop after this many paths were imported or linked (a trial run).
    pub limit: Option<usize>,
}

/// Where imported paths go.
#[derive(Clone)]
pub struct Target {
    /// Larder's database.
    pub db: Db,
    /// Larder's staging storage.
    pub staging: Arc<dyn Storage>,
    /// Seals the imported signing keys.
    pub kek: Kek,
}
