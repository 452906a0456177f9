//! The last step of a chunk-level push (docs/protocol.md "Chunk-level
//! push"): the NAR committed as its chunk list once the path's references
//! are in the cache ([`Gate`]), so the cache never serves a path whose
//! closure is incomplete.
//!
//! To a server that takes it, the commit goes in two steps: the *prepare*
//! (the server reads the NAR back from its chunks, verifies and stages it:
//! a commit's heavy work) right after the path's chunks, without waiting
//! for the references; then, once the gate opens, the *publish*, which only
//! records the prepared NAR. Along a chain of dependencies the heavy work
//! overlaps and only the cheap publishes run one after another. A publish
//! whose prepared NAR is gone (expired, another replica) falls back to the
//! one-step commit, as does every commit to an older server.

use larder_core::chunk::ChunkHash;
use larder_core::wire::chunk_push::{
    ChunkParamsResponse, CommitMode, CommitNarRequest, PreparedNarResponse,
};
use larder_core::wire::{UploadKind, UploadPathNarInfo, UploadPathResult};

use super::error::UploadError;
use super::gate::Gate;
use super::progress::PathProgress;
use crate::api::ApiClient;
use larder_core::CacheName;

/// Where a path goes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The server.
    pub api: &'a ApiClient,
    /// The cache.
    pub cache: &'a CacheName,
    /// Whether the commit may replace another NAR of the path.
    pub replace: bool,
}

/// A NAR whose chunks are sent.
pub struct Nar {
    /// Its upload metadata.
    pub meta: UploadPathNarInfo,
    /// Its chunks, in order.
    pub chunks: Vec<ChunkHash>,
    /// The ids of the lists the server was asked about, which concatenated
    /// are `chunks`; empty when the server cannot be referred to them.
    pub lists: Vec<String>,
}

/// Commits `nar` once `gate` opens, preparing it before when the server
/// takes prepare and publish.
pub async fn commit(
    target: Target<'_>,
    nar: Nar,
    params: &ChunkParamsResponse,
    progress: &PathProgress,
    gate: &mut Gate,
) -> Result<UploadKind, UploadError> {
    let step = Step {
        target,
        nar: &nar,
        compact: params.hash_lists,
        progress,
    };
    if !params.prepare_publish {
        gate.wait().await?;
        return step.one_step().await;
    }
    // Nothing left to cut or send: the next path may start meanwhile.
    gate.release_turn();
    let prepared: PreparedNarResponse = step.send(CommitMode::Prepare, None).await?;
    gate.wait().await?;
    match step
        .send::<UploadPathResult>(CommitMode::Publish, Some(prepared.prepared))
        .await
    {
        Err(UploadError::Api(e)) if e.kind() == Some("PreparedMissing") => step.one_step().await,
        other => other.map(|r| r.kind),
    }
}

/// One NAR's commit requests.
struct Step<'a> {
    target: Target<'a>,
    nar: &'a Nar,
    /// Chunk lists as raw hashes.
    compact: bool,
    progress: &'a PathProgress,
}

impl Step<'_> {
    async fn one_step(&self) -> Result<UploadKind, UploadError> {
        let done: UploadPathResult = self.send(CommitMode::Commit, None).await?;
        Ok(done.kind)
    }

    /// One `POST …/nars` in `mode`: naming the asked lists when it can,
    /// listing the chunks when the server forgot them.
    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        mode: CommitMode,
        prepared: Option<String>,
    ) -> Result<T, UploadError> {
        if mode != CommitMode::Publish && !self.nar.lists.is_empty() {
            match self.send_as(mode, prepared.clone(), true).await {
                Err(UploadError::Api(e)) if e.kind() == Some("ChunkListUnknown") => {}
                done => return done,
            }
        }
        self.send_as(mode, prepared, false).await
    }

    /// One `POST …/nars` in `mode`, with the client's retries.
    async fn send_as<T: serde::de::DeserializeOwned>(
        &self,
        mode: CommitMode,
        prepared: Option<String>,
        by_list: bool,
    ) -> Result<T, UploadError> {
        let Target {
            api,
            cache,
            replace,
        } = self.target;
        let req = CommitNarRequest {
            info: self.nar.meta.clone(),
            chunks: Vec::new(),
            mode,
            prepared,
            chunk_lists: if by_list {
                self.nar.lists.clone()
            } else {
                Vec::new()
            },
        };
        // A publish names its prepared NAR instead of listing chunks.
        let chunks: &[ChunkHash] = match mode {
            CommitMode::Publish => &[],
            _ if by_list => &[],
            _ => &self.nar.chunks,
        };
        api.retry_policy()
            .run(
                |e: &UploadError, wait| self.progress.retrying(e, wait),
                |_| async {
                    Ok(api
                        .commit_nar(cache, &req, chunks, self.compact, replace)
                        .await?)
                },
            )
            .await
    }
}
