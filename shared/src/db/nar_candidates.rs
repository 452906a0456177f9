//! The NARs of a cache's earlier versions of a package: where chunk-level
//! push looks for chunks a new NAR shares (docs/protocol.md "Chunk-level
//! push"). A NAR lists its chunks in one column, with no row per chunk per
//! NAR, so "which NARs of this cache hold chunk X" has no index; the NARs of
//! paths with the same package name are the few worth decoding, and every
//! one of them is in the cache asked about, which is what keeps the answer
//! free of other tenants' data.

use std::collections::HashSet;

use sqlx::Row;

use super::nars::decode_chunk_list;
use super::{CacheId, ChunkId, DbError, Raw};
use crate::on_conn;

/// The chunk ids of the ready NARs of at most `limit` paths of `cache`
/// whose name starts with `name_prefix`, newest paths first.
pub async fn chunk_ids(
    raw: Raw<'_>,
    cache: CacheId,
    name_prefix: &str,
    limit: i64,
) -> Result<HashSet<ChunkId>, DbError> {
    let pattern = like_pattern(name_prefix);
    on_conn!(raw, c => {
        let rows = sqlx::query(
            "SELECT n.chunk_list FROM objects o JOIN nars n ON n.id = o.nar_id
             WHERE o.cache_id = $1 AND n.state = 'ready' AND n.chunk_list IS NOT NULL
                 AND o.store_path LIKE $2 ESCAPE '\\'
             ORDER BY o.id DESC LIMIT $3",
        )
        .bind(cache)
        .bind(&pattern)
        .bind(limit)
        .fetch_all(&mut *c)
        .await?;
        let mut ids = HashSet::new();
        for r in &rows {
            let list: Vec<u8> = r.try_get("chunk_list")?;
            ids.extend(decode_chunk_list(&list)?);
        }
        Ok(ids)
    })
}

/// `%/<32 any>-<prefix>%`, with LIKE's metacharacters in `prefix` escaped.
fn like_pattern(prefix: &str) -> String {
    let mut p = String::from("%/");
    p.push_str(&"_".repeat(32));
    p.push('-');
    for ch in prefix.chars() {
        if matches!(ch, '\\' | '%' | '_') {
            p.push('\\');
        }
        p.push(ch);
    }
    p.push('%');
    p
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_pattern_escapes() {
        assert_eq!(
            super::like_pattern("a_b%"),
            format!("%/{}-a\\_b\\%%", "_".repeat(32))
        );
    }
}
