//! The in-memory revocation list of this replica, refreshed from the
//! database every `[jwt] revocation-refresh`: a revocation reaches every
//! replica within that interval, with no query per request.

use std::sync::{Arc, RwLock};

use larder_shared::db::{Db, DbError, tokens};
use larder_shared::token::Revocations;

/// Shared, swappable revocation list.
#[derive(Debug, Default)]
pub struct RevocationCache {
    current: RwLock<Arc<Revocations>>,
}

impl RevocationCache {
    /// The list in force now (cheap: clones an `Arc`).
    pub fn get(&self) -> Arc<Revocations> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reloads from the database.
    pub async fn refresh(&self, db: &Db) -> Result<(), DbError> {
        let mut conn = db.conn().await?;
        let list = Revocations::new(tokens::revocations(conn.raw()).await?);
        let mut g = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *g = Arc::new(list);
        Ok(())
    }
}
