//! Small request bodies (narinfo, listing, `nix-cache-info`) read whole,
//! with a limit, so a client cannot make the API buffer more than that.

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use crate::error::{ApiError, ApiResult};

/// Reads a small body whole, refusing more than `limit` bytes.
pub async fn read_limited(body: Body, limit: usize, what: &str) -> ApiResult<Bytes> {
    let mut body = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| ApiError::BadRequest(format!("upload interrupted: {e}")))?;
        if buf.len() + piece.len() > limit {
            return Err(ApiError::PayloadTooLarge(format!(
                "{what} larger than {limit} bytes"
            )));
        }
        buf.extend_from_slice(&piece);
    }
    Ok(buf.freeze())
}
