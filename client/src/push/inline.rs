//! A NAR of one chunk (below the cache's `nar_size_threshold`) pushed in
//! one request (docs/protocol.md "Inline NARs"): its bytes, as one zstd
//! frame, in its one-step commit. Asking whether the cache has the chunk
//! would cost a request to learn what the push already implies (the chunk
//! is the whole NAR, and the cache lacks the path), and sending it in a
//! batch of its own another: each carries the token and its head. For a
//! server without inline NARs, such a path goes by its chunk as before.

use tokio::io::AsyncReadExt as _;

use larder_core::wire::chunk_push::{CommitMode, CommitNarRequest};
use larder_core::wire::{UploadKind, UploadPathNarInfo, UploadPathResult};

use super::chunked::compress;
use super::commit::Target;
use super::error::UploadError;
use super::gate::Gate;
use super::progress::PathProgress;
use crate::nix::{Nix, PathInfo};

/// Pushes `info` (upload metadata `meta`), a NAR below `threshold` bytes
/// compressed at `level`, once `gate` opens.
pub async fn push(
    target: Target<'_>,
    nix: &Nix,
    info: &PathInfo,
    meta: UploadPathNarInfo,
    (threshold, level): (u32, i32),
    progress: &PathProgress,
    gate: &mut Gate,
) -> Result<UploadKind, UploadError> {
    let Target {
        api,
        cache,
        replace,
    } = target;
    progress.restart();
    let (nar, dump) = nix.dump(&info.path)?.into_reader();
    // One byte past the threshold tells a NAR that grew since it was listed.
    let mut bytes = Vec::with_capacity(info.nar_size as usize);
    nar.take(u64::from(threshold) + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| UploadError::Dump(format!("reading the NAR: {e}")))?;
    dump.wait().await.map_err(UploadError::Dump)?;
    if bytes.len() as u64 != info.nar_size {
        return Err(UploadError::Dump(format!(
            "`nix-store --dump` gave {} bytes; the path's NarSize is {}",
            bytes.len(),
            info.nar_size
        )));
    }
    let compressed = tokio::task::spawn_blocking(move || compress(&bytes, level))
        .await
        .map_err(|e| UploadError::Dump(format!("compressing the NAR: {e}")))?
        .map_err(|e| UploadError::Dump(format!("compressing the NAR: {e}")))?;
    // Nothing left to cut or send before the commit: the next path may start.
    gate.release_turn();
    gate.wait().await?;
    let req = CommitNarRequest {
        info: meta,
        chunks: Vec::new(),
        mode: CommitMode::Commit,
        prepared: None,
        list_ids_follow: false,
        chunk_lists: Vec::new(),
    };
    let done: UploadPathResult = api
        .retry_policy()
        .run(
            |e: &UploadError, wait| progress.retrying(e, wait),
            |_| async {
                Ok(api
                    .commit_inline_nar(cache, &req, &compressed, replace)
                    .await?)
            },
        )
        .await?;
    progress.frames_sent(compressed.len() as u64);
    progress.chunks_done(info.nar_size, 0);
    Ok(done.kind)
}
