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
//!
//! To a server that streams prepares, the prepare opens when the path's
//! cutting starts ([`StreamedPrepare`]) and its chunk list follows a group
//! at a time, each once that group's chunks are in, so the server's pass
//! over the NAR runs beside the client's. A streamed prepare that fails is
//! repeated listing the chunks whole, which is the authority (unless the
//! failure is about the NAR itself, such as a NarHash that does not hold,
//! which a repeat would only meet again): if that one
//! works, the stream was the trouble (a proxy that wants a length, a link
//! so slow that a group's chunks outlast the server's body-rate window)
//! and the rest of the run prepares whole, unless only the list ids were
//! unknown (another replica was asked): then lists go as hashes, streamed
//! or whole, for the rest of the run.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::channel::mpsc;
use tokio::task::JoinHandle;

use larder_core::CacheName;
use larder_core::chunk::ChunkHash;
use larder_core::wire::chunk_push::{
    ChunkParamsResponse, CommitMode, CommitNarRequest, PreparedNarResponse, chunk_list_hash,
};
use larder_core::wire::{UploadKind, UploadPathNarInfo, UploadPathResult};

use super::error::UploadError;
use super::gate::Gate;
use super::progress::PathProgress;
use crate::api::{ApiClient, ApiError};

/// What `larder push` knows of a server's chunk-level push: its
/// parameters, and how prepares still stream this run.
#[derive(Debug)]
pub struct Chunking {
    /// The server's parameters.
    pub params: ChunkParamsResponse,
    streams: AtomicBool,
    /// Whether a list goes as the ids of the groups' questions (streamed,
    /// or in a whole prepare or commit); cleared once a replica did not
    /// know one.
    list_ids: AtomicBool,
}

impl Chunking {
    /// Chunk push with `params`; prepares stream if the server takes it.
    pub fn new(params: ChunkParamsResponse) -> Self {
        let streams = params.prepare_publish && params.hash_lists && params.streamed_prepare;
        Self {
            list_ids: AtomicBool::new(params.chunk_list_refs),
            params,
            streams: AtomicBool::new(streams),
        }
    }

    /// Whether a path's prepare opens as its cutting starts.
    pub fn streams_prepares(&self) -> bool {
        self.streams.load(Ordering::Relaxed)
    }

    /// Whether a list goes as the ids of the groups' questions (each group
    /// then asked whole and in order), else as chunk hashes.
    pub fn names_lists(&self) -> bool {
        self.list_ids.load(Ordering::Relaxed)
    }

    /// A replica did not know a list the push asked it about (a balancer
    /// spreading the push over replicas, a restart): the rest of the run
    /// lists chunks, rather than meet `409 ChunkListUnknown` once a path.
    fn lists_unknown(&self) {
        self.list_ids.store(false, Ordering::Relaxed);
    }

    /// A streamed prepare failed with `error` where a whole-list one then
    /// worked. Lists unknown to the replica that took it (a balancer
    /// spreading a push over replicas) stream as hashes from now on; any
    /// other trouble stops streaming.
    fn streamed_failed(&self, error: &UploadError) {
        match error {
            UploadError::Api(e) if e.kind() == Some("ChunkListUnknown") => self.lists_unknown(),
            _ => self.streams.store(false, Ordering::Relaxed),
        }
    }
}

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

/// A prepare opened as the path's cutting starts, its chunk list sent as
/// the chunks go in ([`ApiClient::prepare_streamed`]). Dropped before
/// [`StreamedPrepare::answer`], it breaks off the request, and the server
/// keeps nothing of it.
pub struct StreamedPrepare {
    list: Option<mpsc::UnboundedSender<io::Result<Bytes>>>,
    /// Whether the list goes as the ids of the groups' questions.
    by_list: bool,
    /// Hashes (raw) whose chunks may still be on their way.
    queued: Vec<u8>,
    request: Option<JoinHandle<Result<PreparedNarResponse, ApiError>>>,
}

impl StreamedPrepare {
    /// Opens the prepare of the NAR `meta` describes; `by_list`: its list
    /// goes as the ids of the groups' questions (each group is asked whole
    /// and in order, as hash lists), else as the chunks' hashes.
    pub fn open(target: Target<'_>, meta: &UploadPathNarInfo, by_list: bool) -> Self {
        let (tx, rx) = mpsc::unbounded();
        let req = CommitNarRequest {
            info: meta.clone(),
            chunks: Vec::new(),
            mode: CommitMode::Prepare,
            prepared: None,
            chunk_lists: Vec::new(),
            list_ids_follow: by_list,
        };
        let (api, cache, replace) = (target.api.clone(), target.cache.clone(), target.replace);
        let request =
            tokio::spawn(async move { api.prepare_streamed(&cache, &req, rx, replace).await });
        Self {
            list: Some(tx),
            by_list,
            queued: Vec::new(),
            request: Some(request),
        }
    }

    /// Queues the next group of the list, whose chunks are sent (or being
    /// sent, or present); `list`: the group's list id, if its question
    /// was asked as one.
    pub fn queue(&mut self, group: &[ChunkHash], list: Option<ChunkHash>) {
        if self.by_list {
            let id = list.unwrap_or_else(|| chunk_list_hash(group));
            self.queued.extend_from_slice(id.as_bytes());
            return;
        }
        for h in group {
            self.queued.extend_from_slice(h.as_bytes());
        }
    }

    /// Sends the queued hashes: every chunk they name is in.
    pub fn release(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        let piece = Bytes::from(std::mem::take(&mut self.queued));
        // A closed request has failed: its answer says why.
        if let Some(list) = &self.list {
            let _ = list.unbounded_send(Ok(piece));
        }
    }

    /// Ends the list and waits for the server's answer.
    async fn answer(mut self) -> Result<PreparedNarResponse, UploadError> {
        self.release();
        self.list = None;
        let Some(request) = self.request.take() else {
            return Err(UploadError::Dump("streamed prepare answered twice".into()));
        };
        request
            .await
            .map_err(|e| UploadError::Dump(format!("prepare task failed: {e}")))?
            .map_err(UploadError::Api)
    }
}

impl Drop for StreamedPrepare {
    fn drop(&mut self) {
        if let Some(request) = &self.request {
            request.abort();
        }
    }
}

/// Commits `nar` once `gate` opens, preparing it before when the server
/// takes prepare and publish (`streamed`: the prepare opened already).
pub async fn commit(
    target: Target<'_>,
    nar: Nar,
    chunking: &Chunking,
    streamed: Option<StreamedPrepare>,
    progress: &PathProgress,
    gate: &mut Gate,
) -> Result<UploadKind, UploadError> {
    let params = &chunking.params;
    let step = Step {
        target,
        chunking,
        nar: &nar,
        compact: params.hash_lists,
        progress,
    };
    if one_step(params.prepare_publish, streamed.is_some(), nar.chunks.len()) {
        gate.wait().await?;
        return step.one_step().await;
    }
    // Nothing left to cut or send: the next path may start meanwhile.
    gate.release_turn();
    let prepared: PreparedNarResponse = match streamed {
        None => step.send(CommitMode::Prepare, None).await?,
        Some(streamed) => match streamed.answer().await {
            Ok(prepared) => prepared,
            Err(e) if about_the_nar(&e) => return Err(e),
            Err(e) => {
                let prepared = step.send(CommitMode::Prepare, None).await?;
                chunking.streamed_failed(&e);
                prepared
            }
        },
    };
    gate.wait().await?;
    match step
        .send::<UploadPathResult>(CommitMode::Publish, Some(prepared.prepared))
        .await
    {
        Err(UploadError::Api(e)) if e.kind() == Some("PreparedMissing") => step.one_step().await,
        other => other.map(|r| r.kind),
    }
}

/// Whether a NAR commits in one step once its gate opens, rather than
/// prepared before and published after: when the server has no prepare,
/// and for a NAR of one chunk not being streamed (below
/// `nar_size_threshold`). Verifying one chunk is no work worth taking out
/// of the wait, and the split costs a request and the metadata again,
/// about 1.5 KB: a third of what a small path sends besides its chunk.
fn one_step(prepare_publish: bool, streamed: bool, chunks: usize) -> bool {
    !prepare_publish || (!streamed && chunks <= 1)
}

/// Whether a streamed prepare's failure is about the NAR or the pusher
/// (a forged NarHash, another NAR already published, a token that may not
/// push), which the same prepare listing its chunks whole would only meet
/// again: reported as it is, not repeated.
fn about_the_nar(error: &UploadError) -> bool {
    let UploadError::Api(e) = error else {
        return false;
    };
    matches!(
        e.kind(),
        Some("InvalidNar" | "PathConflict" | "Unauthorized" | "PermissionDenied" | "NoSuchCache")
    )
}

/// One NAR's commit requests.
struct Step<'a> {
    target: Target<'a>,
    chunking: &'a Chunking,
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
        if mode != CommitMode::Publish && !self.nar.lists.is_empty() && self.chunking.names_lists()
        {
            match self.send_as(mode, prepared.clone(), true).await {
                Err(UploadError::Api(e)) if e.kind() == Some("ChunkListUnknown") => {
                    self.chunking.lists_unknown();
                }
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
            list_ids_follow: false,
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

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;
    use crate::api::error::Call;

    fn params() -> ChunkParamsResponse {
        ChunkParamsResponse {
            nar_size_threshold: 64 * 1024,
            min_size: 16 * 1024,
            avg_size: 64 * 1024,
            max_size: 256 * 1024,
            max_batch_bytes: 16 << 20,
            max_missing_chunks: 10_000,
            max_commit_chunks: 500_000,
            zstd_level: 3,
            prepare_publish: true,
            hash_lists: true,
            chunk_list_refs: true,
            streamed_prepare: true,
            inline_nars: true,
        }
    }

    fn refused(status: StatusCode, kind: &str) -> UploadError {
        UploadError::Api(ApiError::Status {
            call: Call {
                method: reqwest::Method::POST,
                url: "http://127.0.0.1/_api/larder/v1/caches/c/nars".into(),
            },
            status,
            kind: Some(kind.into()),
            message: String::new(),
            retry_after: None,
        })
    }

    #[test]
    fn unknown_lists_stream_as_hashes_and_other_failures_stop_streaming() {
        let chunking = Chunking::new(params());
        assert!(chunking.streams_prepares() && chunking.names_lists());
        chunking.streamed_failed(&refused(StatusCode::CONFLICT, "ChunkListUnknown"));
        assert!(chunking.streams_prepares() && !chunking.names_lists());
        chunking.streamed_failed(&refused(StatusCode::LENGTH_REQUIRED, "LengthRequired"));
        assert!(!chunking.streams_prepares());

        let final_ = refused(StatusCode::BAD_REQUEST, "InvalidNar");
        assert!(
            about_the_nar(&final_),
            "a forged NarHash is reported, not repeated"
        );
        assert!(!about_the_nar(&refused(
            StatusCode::LENGTH_REQUIRED,
            "LengthRequired"
        )));
        assert!(!about_the_nar(&refused(
            StatusCode::CONFLICT,
            "ChunkListUnknown"
        )));

        let older = Chunking::new(ChunkParamsResponse {
            streamed_prepare: false,
            ..params()
        });
        assert!(!older.streams_prepares(), "only to a server advertising it");
    }

    #[test]
    fn a_nar_of_one_chunk_commits_in_one_step() {
        assert!(one_step(true, false, 1), "a small NAR");
        assert!(!one_step(true, false, 2));
        assert!(!one_step(true, true, 1), "a streamed prepare is answered");
        assert!(one_step(false, false, 9), "a server without prepare");
    }
}
