//! A NAR of one chunk (below `nar_size_threshold`) committed with its bytes
//! in the commit request (docs/protocol.md "Inline NARs"). Asking whether
//! the cache has such a chunk is nearly pointless: the chunk is the whole
//! NAR, and the path is being pushed because the cache lacks it. So the
//! client skips the question and the batch and sends the NAR as zstd in
//! its one-step commit: one request, one token and one copy of the
//! metadata per small path, instead of three.
//!
//! The compressed bytes are bounded by the request limit and the output by
//! the claimed NarSize, itself below the threshold: a frame cannot inflate
//! past it. The NAR then goes through the whole-NAR upload path unchanged
//! (verified, staged, recorded in one transaction).

use bytes::Bytes;

use crate::error::{ApiError, ApiResult};

/// Largest body of an inline commit with a head of at most `head` bytes:
/// the head, its length, and a zstd frame of a NAR below `threshold`
/// (zstd's worst-case expansion).
pub fn body_limit(head: usize, threshold: u32) -> usize {
    4 + head + zstd::zstd_safe::compress_bound(threshold as usize)
}

/// The NAR `compressed` decodes to, at most `nar_size` bytes, which must be
/// below `threshold`. A shorter NAR passes here and fails the upload path's
/// size check.
pub fn decompress(compressed: &[u8], nar_size: u64, threshold: u32) -> ApiResult<Bytes> {
    if nar_size >= u64::from(threshold) {
        return Err(ApiError::BadRequest(format!(
            "an inline NAR is smaller than nar_size_threshold ({threshold} bytes); \
             this one claims {nar_size}: send its chunks"
        )));
    }
    zstd::bulk::decompress(compressed, nar_size as usize)
        .map(Bytes::from)
        .map_err(|e| {
            ApiError::InvalidNar(format!(
                "the inline NAR is not zstd of at most its NarSize ({nar_size} bytes): {e}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_within_the_claimed_size_and_threshold() {
        let nar = vec![7u8; 1000];
        let z = zstd::bulk::compress(&nar, 3).unwrap();
        assert_eq!(decompress(&z, 1000, 65536).unwrap(), nar);
        // Inflating past the claim is refused, not buffered.
        assert!(matches!(
            decompress(&z, 999, 65536),
            Err(ApiError::InvalidNar(_))
        ));
        assert!(matches!(
            decompress(b"not zstd", 10, 65536),
            Err(ApiError::InvalidNar(_))
        ));
        assert!(matches!(
            decompress(&z, 65536, 65536),
            Err(ApiError::BadRequest(_))
        ));
        assert!(body_limit(100, 65536) > 65536 + 104);
    }
}
