//! Wire types of the Attic API as Larder serves it (docs/protocol.md, "Attic wire
//! format"). They are restated here rather than imported from the server
//! crate: the JSON is the contract, and the client must not link the server.

use serde::{Deserialize, Serialize};

/// How to set a cache's signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeypairConfig {
    /// The server generates a fresh ed25519 key.
    Generate,
    /// Import `name:base64(64 bytes)`.
    Keypair(String),
}

/// `"Global"` or `{"Period": seconds}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetentionPeriodConfig {
    /// The server's default.
    Global,
    /// Seconds; 0 keeps paths forever.
    Period(u64),
}

/// Attic's `CacheConfig`. Every field is optional, and absent ones are not
/// serialised: a `PATCH` must carry only the fields the user gave.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheConfig {
    /// Write only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keypair: Option<KeypairConfig>,
    /// Read only: `name:base64`, for Nix's `trusted-public-keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Read only (Larder): every active key, newest first (more than one
    /// during a key rotation's overlap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_keys: Option<Vec<String>>,
    /// Write only (Larder), with `keypair`: the previous keys stop signing
    /// now rather than after the server's rotation overlap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_overlap: Option<bool>,
    /// Whether anyone may pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_public: Option<bool>,
    /// The store directory the cache's paths live in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_dir: Option<String>,
    /// Substituter priority (lower is preferred).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Key names whose signatures mark a path as available upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_cache_key_names: Option<Vec<String>>,
    /// How long unused paths are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_period: Option<RetentionPeriodConfig>,
    /// Read only: the URL Nix substitutes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substituter_endpoint: Option<String>,
    /// Read only: the API base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_endpoint: Option<String>,
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_body_carries_only_given_fields() {
        let cfg = CacheConfig {
            priority: Some(30),
            retention_period: Some(RetentionPeriodConfig::Period(3600)),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&cfg).unwrap(),
            r#"{"priority":30,"retention_period":{"Period":3600}}"#
        );
        let cfg = CacheConfig {
            keypair: Some(KeypairConfig::Generate),
            retention_period: Some(RetentionPeriodConfig::Global),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&cfg).unwrap(),
            r#"{"keypair":"Generate","retention_period":"Global"}"#
        );
        let cfg = CacheConfig {
            keypair: Some(KeypairConfig::Keypair("k:AAAA".into())),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&cfg).unwrap(),
            r#"{"keypair":{"Keypair":"k:AAAA"}}"#
        );
    }

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
