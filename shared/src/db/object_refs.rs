//! `object_refs`: the reverse reference index (migration 0008). One row per
//! (cache, referenced hash part, referrer), so "does a remaining object of
//! this cache refer to X?" is one index lookup, which GC's expiry re-checks
//! in its `DELETE` (`super::gc::delete_unneeded_objects`). Self-references
//! are left out; references to paths the cache lacks are kept (no foreign
//! key on the hash). Rows go with their object (`ON DELETE CASCADE`).

use std::collections::BTreeSet;

use sqlx::{AssertSqlSafe, Row};

use super::chunks::BATCH;
use super::{CacheId, DbError, ObjectId, Raw, placeholders};
use crate::on_conn;

/// Hash parts (32 characters) of an object's references, without its own,
/// sorted and distinct; base names too short to hold one are skipped.
pub fn ref_hashes<'a>(
    self_hash: &str,
    references: impl IntoIterator<Item = &'a str>,
) -> BTreeSet<String> {
    references
        .into_iter()
        .filter_map(|r| r.get(..32))
        .filter(|h| *h != self_hash)
        .map(str::to_owned)
        .collect()
}

/// Makes the index rows of object `object_id` match `hashes` (from
/// [`ref_hashes`]); run in the transaction that wrote the object. A
/// re-push with unchanged references reads one index range and writes
/// nothing.
pub async fn replace(
    mut raw: Raw<'_>,
    cache_id: CacheId,
    object_id: ObjectId,
    hashes: &BTreeSet<String>,
) -> Result<(), DbError> {
    let stored: BTreeSet<String> = on_conn!(raw.reborrow(), c => {
        let rows = sqlx::query("SELECT ref_hash FROM object_refs WHERE object_id = $1")
            .bind(object_id)
            .fetch_all(&mut *c)
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("ref_hash"))
            .collect::<Result<_, _>>()?
    });
    let gone: Vec<&String> = stored.difference(hashes).collect();
    let added: Vec<&String> = hashes.difference(&stored).collect();
    for batch in gone.chunks(BATCH) {
        let sql = format!(
            "DELETE FROM object_refs WHERE object_id = $1 AND ref_hash IN ({})",
            placeholders(2, batch.len())
        );
        on_conn!(raw.reborrow(), c => {
            let mut q = sqlx::query(AssertSqlSafe(&*sql)).bind(object_id);
            for h in batch {
                q = q.bind(h.as_str());
            }
            q.execute(&mut *c).await?;
        });
    }
    for batch in added.chunks(BATCH - 2) {
        let values = (0..batch.len())
            .map(|i| format!("($1, ${}, $2)", i + 3))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO object_refs (cache_id, ref_hash, object_id) VALUES {values}
             ON CONFLICT DO NOTHING"
        );
        on_conn!(raw.reborrow(), c => {
            let mut q = sqlx::query(AssertSqlSafe(&*sql)).bind(cache_id).bind(object_id);
            for h in batch {
                q = q.bind(h.as_str());
            }
            q.execute(&mut *c).await?;
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ref_hashes;

    #[test]
    fn self_references_and_short_names_are_left_out() {
        let me = "a".repeat(32);
        let dep = format!("{}-dep", "b".repeat(32));
        let mine = format!("{me}-me");
        let got = ref_hashes(&me, [mine.as_str(), dep.as_str(), "short", dep.as_str()]);
        assert_eq!(got.into_iter().collect::<Vec<_>>(), vec!["b".repeat(32)]);
    }
}
