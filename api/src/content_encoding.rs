//! `Content-Encoding` on the small metadata PUTs (`.narinfo`, `.ls`,
//! `log/<drv>`): Nix ≥ 2.32 compresses them when `narinfo-compression`,
//! `ls-compression` or `log-compression` is set and names the method in the
//! header (docs/protocol.md "Compressed metadata"). The body is decoded
//! here, bounded, before anything parses or stores it: encoded bytes are
//! never taken for the text.

use std::io;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::Bytes;

use larder_core::nix::narinfo::Compression;

use crate::body::read_limited;
use crate::error::{ApiError, ApiResult};
use crate::upload_decode::{self, DecodeError, Decoding, Detected};

/// The encodings Nix names (its compression method names) and the HTTP
/// registry's aliases for them.
fn coding(name: &str) -> Option<Compression> {
    Some(match name {
        "identity" | "none" => Compression::None,
        "gzip" | "x-gzip" => Compression::Gzip,
        "br" => Compression::Brotli,
        "zstd" => Compression::Zstd,
        "xz" => Compression::Xz,
        "bzip2" => Compression::Bzip2,
        "lz4" => Compression::Lz4,
        "lzip" => Compression::Lzip,
        _ => return None,
    })
}

/// The request's single `Content-Encoding` (absent: identity); anything
/// else, a list of codings included, is a 415 naming it.
fn requested(headers: &HeaderMap) -> ApiResult<Compression> {
    let values: Vec<_> = headers.get_all(header::CONTENT_ENCODING).iter().collect();
    let name = match values[..] {
        [] => return Ok(Compression::None),
        [one] => one
            .to_str()
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default(),
        _ => "several codings".to_owned(),
    };
    coding(&name).ok_or_else(|| {
        ApiError::UnsupportedMediaType(format!(
            "unsupported Content-Encoding {name:?}: send one of identity, gzip, br, zstd, xz, \
             bzip2, lz4, lzip"
        ))
    })
}

/// Reads a metadata body whole and decodes it as its `Content-Encoding`
/// says; both the encoded and the decoded bytes are limited to `limit`
/// (413 past it). zstd frames may use windows up to `2^window_log_max`.
pub async fn read_decoded(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    what: &'static str,
    window_log_max: u32,
) -> ApiResult<Bytes> {
    let compression = requested(headers)?;
    let encoded = read_limited(body, limit, what).await?;
    if compression == Compression::None {
        return Ok(encoded);
    }
    let decoding = Decoding {
        detected: Detected {
            compression,
            by_magic: true,
        },
        window_log_max,
    };
    let decoded = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut input = &encoded[..];
        upload_decode::decode(decoding, &mut input, |piece| {
            if out.len() + piece.len() > limit {
                return Err(io::Error::other("over the limit"));
            }
            out.extend_from_slice(&piece);
            Ok(())
        })
        .map(|()| out)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("decoder task failed: {e}")))?;
    match decoded {
        Ok(out) => Ok(out.into()),
        Err(DecodeError::Sink(_)) => Err(ApiError::PayloadTooLarge(format!(
            "{what} larger than {limit} bytes once decoded"
        ))),
        Err(e) => Err(ApiError::BadRequest(format!(
            "{what} body does not decode as its Content-Encoding {compression}: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::CONTENT_ENCODING, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn names_nix_sends_and_nothing_else() {
        assert_eq!(requested(&with(&[])).unwrap(), Compression::None);
        assert_eq!(requested(&with(&["identity"])).unwrap(), Compression::None);
        assert_eq!(requested(&with(&["ZSTD"])).unwrap(), Compression::Zstd);
        assert_eq!(requested(&with(&["br"])).unwrap(), Compression::Brotli);
        assert_eq!(requested(&with(&["x-gzip"])).unwrap(), Compression::Gzip);
        for bad in [&["compress"][..], &["gzip, br"], &["gzip", "br"]] {
            assert!(matches!(
                requested(&with(bad)),
                Err(ApiError::UnsupportedMediaType(_))
            ));
        }
    }
}
