//! The start-up step every process runs after migrating (`larder-api`,
//! `larder-worker`, `larder-admin`): seals the plain keys migration 0010
//! copied, clears the secrets of retired keys, and rewrites the tables so no
//! plain or cleared bytes stay in the database files.

use super::{Kek, KeyError};
use crate::db::Db;
use crate::db::cache_keys;
use larder_core::nix::signing::SigningKey;

/// What [`prepare`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prepared {
    /// Plain keys sealed now.
    pub sealed: usize,
    /// Retired keys whose secret was cleared now.
    pub forgotten: u64,
}

/// Seals plain keys with `kek` (an error naming the config key and the
/// environment variable when there are some and no KEK), clears secrets of
/// keys retired by `now`, and purges freed pages if it sealed any.
/// Idempotent, and safe when several processes start at once (a row is
/// sealed only while it is still plain).
pub async fn prepare(db: &Db, kek: Option<&Kek>, now: i64) -> Result<Prepared, KeyError> {
    let mut tx = db.begin().await?;
    // The write first: SQLite then takes its write lock up front (waiting
    // out another process's writes) instead of failing to upgrade a read.
    let forgotten = cache_keys::forget_retired(tx.raw(), now).await?;
    let plain = cache_keys::plain(tx.raw()).await?;
    let mut sealed = 0;
    if !plain.is_empty() {
        let kek = kek.ok_or(KeyError::NoKek)?;
        for row in &plain {
            let key: SigningKey = row.secret.parse().map_err(|source| KeyError::BadPlainKey {
                cache: row.cache_name.clone(),
                source,
            })?;
            let text = kek.seal(&row.cache_name, &key)?;
            let public = key.public_key().to_string();
            if cache_keys::seal(tx.raw(), row.id, &public, &text).await? {
                sealed += 1;
            }
        }
    }
    tx.commit().await?;
    // Only plain bytes warrant a rewrite: cleared secrets were sealed, and
    // useless without the KEK.
    if sealed > 0 && !cache_keys::purge_freed_pages(db).await? {
        tracing::warn!(
            "could not truncate the SQLite WAL (another connection was reading): \
             overwritten key bytes may stay in the -wal file until SQLite reuses it"
        );
    }
    if sealed > 0 || forgotten > 0 {
        tracing::info!(sealed, forgotten, "signing keys at rest updated");
    }
    Ok(Prepared { sealed, forgotten })
}
