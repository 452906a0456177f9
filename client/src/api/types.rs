//! Wire types of the Attic API as Larder serves it (docs/protocol.md, "Attic wire
//! format") that only the client needs; the cache configuration, which the
//! server reads and writes too, is [`larder_core::wire`].

use serde::{Deserialize, Serialize};

pub use larder_core::wire::{CacheConfig, KeypairConfig, RetentionPeriodConfig};

/// `POST /_api/v1/get-missing-paths` request.
#[derive(Debug, Serialize)]
pub struct GetMissingPathsRequest<'a> {
    /// Cache name.
    pub cache: &'a str,
    /// Store path hashes (32 characters each).
    pub store_path_hashes: Vec<&'a str>,
}

/// `POST /_api/v1/get-missing-paths` response.
#[derive(Debug, Deserialize)]
pub struct GetMissingPathsResponse {
    /// The subset of the hashes the cache lacks.
    pub missing_paths: Vec<String>,
}

/// Upload metadata (`X-Attic-Nar-Info` or the body preamble).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UploadPathNarInfo {
    /// Target cache.
    pub cache: String,
    /// 32-character hash part of the store path.
    pub store_path_hash: String,
    /// Absolute store path.
    pub store_path: String,
    /// References as base names.
    pub references: Vec<String>,
    /// System; Nix's path metadata does not carry it.
    pub system: Option<String>,
    /// Deriver base name.
    pub deriver: Option<String>,
    /// Signatures the path already has.
    pub sigs: Vec<String>,
    /// Content address.
    pub ca: Option<String>,
    /// `sha256:<64 hex>`, Attic's spelling.
    pub nar_hash: String,
    /// Uncompressed NAR size.
    pub nar_size: u64,
}

/// `PUT /_api/v1/upload-path` response.
#[derive(Debug, Clone, Deserialize)]
pub struct UploadPathResult {
    /// What the server did with the NAR. (`file_size` and
    /// `frac_deduplicated` are ignored: the summary counts by kind.)
    pub kind: UploadKind,
}

/// Outcome of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum UploadKind {
    /// The NAR was new.
    Uploaded,
    /// The server already had the NAR and linked it.
    Deduplicated,
    /// A kind this client does not know; counted as uploaded.
    #[serde(other)]
    Other,
}

/// The server's error body, `{"code", "error", "message"}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    /// Stable error kind, e.g. `NoSuchCache`.
    #[serde(default)]
    pub error: Option<String>,
    /// Human-readable text.
    #[serde(default)]
    pub message: Option<String>,
}

/// A pin as the server lists it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Pin {
    /// Pin name.
    pub name: String,
    /// Pinned store path.
    pub store_path: String,
    /// When it was set (Unix seconds).
    pub created_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_result_kinds() {
        let r: UploadPathResult = serde_json::from_str(
            r#"{"kind":"Deduplicated","file_size":3,"frac_deduplicated":1.0}"#,
        )
        .unwrap();
        assert_eq!(r.kind, UploadKind::Deduplicated);
        let r: UploadPathResult = serde_json::from_str(r#"{"kind":"Uploaded"}"#).unwrap();
        assert_eq!(r.kind, UploadKind::Uploaded);
        let r: UploadPathResult = serde_json::from_str(r#"{"kind":"Chunked"}"#).unwrap();
        assert_eq!(r.kind, UploadKind::Other);
    }
}
