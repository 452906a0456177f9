//! A commit in two steps (docs/protocol.md "Chunk-level push", "Prepare and
//! publish"): the *prepare* does all of a commit's heavy work (read the NAR
//! back from its chunks, verify NarHash, NarSize and the grammar, stage it)
//! and records nothing, so the client sends it as soon as the path's own
//! chunks are sent; the *publish*, sent once the path's references are in
//! the cache, only records the prepared NAR as the path, in the transaction
//! a whole-NAR upload records it in. A chain of paths then verifies all its
//! NARs at once and publishes them one after another, cheaply.
//!
//! No new table: the prepared NAR is a staging object under a key derived
//! from the cache, the token subject, the NarHash, the NarSize and a random
//! nonce ([`layout::prepared_nar_key`]). The nonce is what the prepare
//! answers; a publish recomputes the key from its own claims, so it finds
//! the object only with the same cache, subject and NAR claim, and only
//! after a prepare verified the bytes (the object appears once staged and
//! goes again if verification fails, before the nonce is answered).
//!
//! Until publish the object is held by its staging intent alone, so nothing
//! is visible (no `nars` or `objects` row), and a prepared NAR never
//! published is an abandoned upload: the sweeper deletes it after its
//! `PREPARED_MAX_AGE` (an hour), sooner than others. A publish that comes
//! too late (claimed by the sweeper), or to a replica whose local staging
//! lacks the object, is `409 PreparedMissing` with nothing recorded.

use std::sync::Mutex;

use sha2::{Digest, Sha256};

use larder_core::wire::{UploadKind, UploadPathResult};
use larder_shared::db::nars::{self, NarState};
use larder_shared::db::staged_chunks::StagedChunks;
use larder_shared::db::{staging_intents, unix_now};
use larder_shared::storage::{ObjectKey, layout};

use crate::error::{ApiError, ApiResult};
use crate::record;
use crate::routes::upload_path::{self, Admitted, BodyStream};
use crate::staging;
use crate::state::AppState;

/// The key of the NAR `admitted` claims, prepared by `pusher` under `nonce`.
fn key(admitted: &Admitted, pusher: &str, nonce: &str) -> ApiResult<ObjectKey> {
    if nonce.is_empty() || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::BadRequest(format!(
            "invalid prepared NAR name {nonce:?}"
        )));
    }
    let expected = admitted.v.expected;
    let mut h = Sha256::new();
    h.update(b"larder prepared NAR\0");
    h.update(admitted.cache.id.get().to_be_bytes());
    h.update(pusher.as_bytes());
    h.update(b"\0");
    h.update(expected.nar_hash.as_bytes());
    h.update(expected.nar_size.to_be_bytes());
    h.update(nonce.as_bytes());
    Ok(layout::prepared_nar_key(&h.finalize().into()))
}

/// Verifies and stages `nar` (the NAR read back from `chunks`) for a
/// later publish; returns the nonce naming it. Records nothing but the
/// staged copy's intent.
pub(crate) async fn prepare(
    state: &AppState,
    admitted: &Admitted,
    pusher: &str,
    nar: BodyStream,
    chunks: &Mutex<StagedChunks>,
) -> ApiResult<String> {
    if let Err(e) = state.staging_quota.admit(&state.db).await {
        if matches!(e, ApiError::StagingFull { .. }) {
            state.metrics.staging_full(&admitted.cache);
        }
        return Err(e);
    }
    let nonce = ulid::Ulid::new().to_string().to_lowercase();
    let key = key(admitted, pusher, &nonce)?;
    {
        let mut conn = state.db.conn().await?;
        staging_intents::insert(conn.raw(), &key, unix_now()).await?;
    }
    let expected = admitted.v.expected;
    if let Err(e) =
        staging::stage(&state.db, &state.staging, &key, nar, expected, Some(chunks)).await
    {
        let _ = staging::discard(&state.db, &state.staging, &key).await;
        return Err(e);
    }
    state.staging_quota.note_staged(expected.nar_size);
    tracing::info!(nar_size = expected.nar_size, "prepared NAR");
    Ok(nonce)
}

/// Records the path `admitted` describes from the NAR prepared under
/// `nonce`: the same rows, job and audit as a whole-NAR upload, in one
/// transaction. `PreparedMissing` when the prepared NAR is not here.
pub(crate) async fn publish(
    state: &AppState,
    admitted: &Admitted,
    pusher: &str,
    nonce: &str,
) -> ApiResult<UploadPathResult> {
    let key = key(admitted, pusher, nonce)?;
    if state.staging.head(&key).await?.is_none() {
        return Err(ApiError::PreparedMissing);
    }
    let Admitted { v, cache } = admitted;
    let now = unix_now();
    let existing = {
        let mut conn = state.db.conn().await?;
        nars::find_by_hash(conn.raw(), &v.expected.nar_hash).await?
    };
    // The store has the NAR (another cache, or a concurrent push): link it,
    // the prepared copy having proved possession, and drop the copy.
    if let Some(nar) = existing.filter(|n| n.state != NarState::Broken) {
        let mut tx = state.db.begin().await?;
        let linked = record::link_existing(&mut tx, &v.path(state, cache), nar.id, now).await?;
        if linked.is_some() {
            tx.commit().await?;
            state.narinfos.forget(cache.id, &v.hash);
            drop_copy(state, &key).await?;
            state.metrics.upload(cache, true, v.expected.nar_size);
            return Ok(uploaded());
        }
        // GC took the NAR meanwhile: record the prepared copy instead.
    }
    match upload_path::record_staged(state, cache, v, &key, now).await {
        Ok(true) => {}
        Ok(false) => drop_copy(state, &key).await?,
        Err(ApiError::StagedCopyExpired) => return Err(ApiError::PreparedMissing),
        Err(e) => return Err(e),
    }
    tracing::info!(nar_size = v.expected.nar_size, "published prepared NAR");
    state.metrics.upload(cache, false, v.expected.nar_size);
    Ok(uploaded())
}

/// Deletes the prepared copy, unless a NAR row names it: a repeated
/// publish (its answer lost) finds the row its first publish recorded,
/// whose staged copy this is until ingest.
async fn drop_copy(state: &AppState, key: &ObjectKey) -> ApiResult<()> {
    let named = {
        let mut conn = state.db.conn().await?;
        nars::staging_key_exists(conn.raw(), key.as_str()).await?
    };
    if named {
        return Ok(());
    }
    staging::discard(&state.db, &state.staging, key).await
}

/// Whether the NAR existed elsewhere is not the caller's to learn.
fn uploaded() -> UploadPathResult {
    UploadPathResult {
        kind: UploadKind::Uploaded,
        file_size: None,
        frac_deduplicated: None,
    }
}
