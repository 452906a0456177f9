//! A prepare whose chunk list streams in (docs/protocol.md "Chunk-level
//! push", "Streamed prepare"). The client opens the prepare when it starts
//! cutting a NAR and sends each group's hashes once that group's chunks
//! are in, so the server reads the NAR back, verifies and stages it while
//! the client is still cutting, not after: on a fast link the server's
//! pass then costs no wall time of its own.
//!
//! The body is the hash-list body of any commit; only its arrival is spread
//! out. Its tail is the chunk hashes, or (`list_ids_follow`) the ids of the
//! caller's questions' lists ([`super::lists`]), 32 bytes a group instead
//! of a chunk, as a commit may name them. Each piece of the list that
//! arrives is checked for presence (the same no-oracle rule as the
//! question) and read back in order into the verifying staging; a piece
//! naming a chunk that is not present fails the prepare with `409
//! ChunksMissing`, a list id the replica does not know with `409
//! ChunkListUnknown`, and any failure leaves nothing staged. The list is
//! bounded as a whole commit's is, and the staging's own check stops a
//! body that describes more than the claimed NarSize.

use std::io;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt, stream};

use larder_core::chunk::ChunkHash;
use larder_core::wire::chunk_push::parse_hashes;
use larder_shared::db::staged_chunks::StagedChunks;

use super::assemble;
use super::lists::ChunkLists;
use super::prepared;
use super::presence::{Presence, Source};
use crate::error::{ApiError, ApiResult};
use crate::routes::upload_path::{Admitted, BodyStream};
use crate::state::AppState;

/// What a streamed prepare's tail carries.
pub enum Tail {
    /// The chunk hashes.
    Hashes,
    /// Ids of remembered lists, resolved from these.
    ListIds(Arc<ChunkLists>),
}

/// Verifies and stages the NAR whose chunk list is `rest` (the body after
/// its head, carrying `tail`) as it arrives; returns the prepared NAR's
/// name, as [`prepared::prepare`].
pub(crate) async fn prepare(
    state: &AppState,
    admitted: &Admitted,
    pusher: &str,
    presence: Presence,
    rest: BodyStream,
    tail: Tail,
    max_chunks: usize,
) -> ApiResult<String> {
    let list: Arc<Mutex<StagedChunks>> = Arc::default();
    let failure: Arc<Mutex<Option<ApiError>>> = Arc::default();
    let pieces = pieces(rest, tail, max_chunks);
    let sources = sources(pieces, presence, list.clone());
    let slot = failure.clone();
    let sources = sources.map_err(move |e| {
        let err = io::Error::other(e.to_string());
        if let Ok(mut slot) = slot.lock() {
            slot.get_or_insert(e);
        }
        err
    });
    let nar = assemble::streamed_nar(state.chunks(), state.staging.clone(), sources);
    let nar: BodyStream = Box::pin(nar.map_err(axum::Error::new));
    let prepared = prepared::prepare(state, admitted, pusher, nar, &list).await;
    // The list's own failure says more than the staging's "interrupted".
    match failure.lock().ok().and_then(|mut f| f.take()) {
        Some(e) if prepared.is_err() => Err(e),
        _ => prepared,
    }
}

/// The chunk list's pieces, as they arrive: the chunks of each whole
/// 32-byte unit (a hash, or a list's id) received so far. `400` for a tail
/// that ends inside a unit, names no chunk or more than `max_chunks`; an
/// interrupted body ends it with an error.
fn pieces(
    body: BodyStream,
    tail: Tail,
    max_chunks: usize,
) -> impl Stream<Item = ApiResult<Vec<ChunkHash>>> {
    struct State {
        body: BodyStream,
        tail: Tail,
        carry: BytesMut,
        total: usize,
        done: bool,
    }
    let start = State {
        body,
        tail,
        carry: BytesMut::new(),
        total: 0,
        done: false,
    };
    stream::unfold(start, move |mut st| async move {
        while !st.done {
            let bytes: Bytes = match st.body.next().await {
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    st.done = true;
                    let e = ApiError::BadRequest(format!("upload interrupted: {e}"));
                    return Some((Err(e), st));
                }
                None => {
                    st.done = true;
                    let error = if !st.carry.is_empty() {
                        format!("hash list ends inside a hash ({} bytes)", st.carry.len())
                    } else if st.total == 0 {
                        "a NAR commit lists 1 or more chunks, not 0".to_owned()
                    } else {
                        return None;
                    };
                    return Some((Err(ApiError::BadRequest(error)), st));
                }
            };
            st.carry.extend_from_slice(&bytes);
            let whole = st.carry.len() - st.carry.len() % 32;
            if whole == 0 {
                continue;
            }
            let raw = st.carry.split_to(whole);
            let piece = parse_hashes(&raw)
                .map_err(|e| ApiError::BadRequest(e.to_string()))
                .and_then(|units| match &st.tail {
                    Tail::Hashes => Ok(units),
                    Tail::ListIds(lists) => lists.resolve(&units),
                });
            let piece = match piece {
                Ok(p) => p,
                Err(e) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
            };
            st.total += piece.len();
            if st.total > max_chunks {
                st.done = true;
                let e = ApiError::BadRequest(format!(
                    "a NAR commit lists 1 to {max_chunks} chunks, not more"
                ));
                return Some((Err(e), st));
            }
            return Some((Ok(piece), st));
        }
        None
    })
}

/// Where each piece's chunks are, in order, each piece's part of the chunk
/// list appended to `list`; `ChunksMissing` for a piece naming a chunk
/// that is not present for this caller.
fn sources(
    pieces: impl Stream<Item = ApiResult<Vec<ChunkHash>>>,
    presence: Presence,
    list: Arc<Mutex<StagedChunks>>,
) -> impl Stream<Item = ApiResult<Vec<Source>>> {
    pieces.and_then(move |piece| {
        let (presence, list) = (presence.clone(), list.clone());
        async move {
            let sources = presence.sources(&piece).await?;
            let part = assemble::chunk_list(&piece, &sources);
            let mut list = list
                .lock()
                .map_err(|_| ApiError::Internal("chunk list poisoned".into()))?;
            list.0.extend(part.0);
            Ok(sources)
        }
    })
}
