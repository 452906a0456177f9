//! `PUT /_api/v1/upload-path`: Attic's NAR upload. The metadata travels in
//! the `X-Attic-Nar-Info` header or a body preamble, the NAR after it.

use serde::{Deserialize, Serialize};

/// Attic's `UploadPathNarInfo`: what the uploader says about the path.
/// Every field is plain text, checked by the server after parsing
/// (store path, hashes, signatures, content address), so a bad value is a
/// 400 naming the field rather than a JSON error. Optional fields may be
/// absent or `null`; the client always sends every field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadPathNarInfo {
    /// Target cache.
    pub cache: String,
    /// 32-character hash part of the store path.
    pub store_path_hash: String,
    /// Absolute store path.
    pub store_path: String,
    /// References as base names.
    #[serde(default)]
    pub references: Vec<String>,
    /// System; Nix's path metadata does not carry it.
    #[serde(default)]
    pub system: Option<String>,
    /// Deriver base name.
    #[serde(default)]
    pub deriver: Option<String>,
    /// Signatures the path already has, `name:base64`.
    #[serde(default)]
    pub sigs: Vec<String>,
    /// Content address, as Nix writes it.
    #[serde(default)]
    pub ca: Option<String>,
    /// `sha256:<64 hex>` (Attic's spelling; nix-base32 is accepted too).
    pub nar_hash: String,
    /// Uncompressed NAR size.
    pub nar_size: u64,
}

/// Attic's `UploadPathResult`, the upload's answer. The sizes are sent only
/// when known, as Attic does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadPathResult {
    /// What the server did with the NAR.
    pub kind: UploadKind,
    /// Bytes stored for this NAR, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size: Option<u64>,
    /// Share of the NAR that was already stored (0 to 1), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frac_deduplicated: Option<f64>,
}

/// What became of an uploaded NAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UploadKind {
    /// The NAR was new and is now staged.
    Uploaded,
    /// The store already had the NAR and linked it.
    Deduplicated,
    /// A kind a newer server may send that this build does not know, so
    /// the client keeps working (it counts it as uploaded). Never sent:
    /// serialising it is an error.
    #[serde(other, skip_serializing)]
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> UploadPathNarInfo {
        UploadPathNarInfo {
            cache: "c".into(),
            store_path_hash: "0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm".into(),
            store_path: "/nix/store/0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm-hello-2.10".into(),
            references: vec![],
            system: None,
            deriver: None,
            sigs: vec!["k-1:sig".into()],
            ca: None,
            nar_hash: "sha256:00".into(),
            nar_size: 168,
        }
    }

    #[test]
    fn nar_info_sends_every_field() {
        assert_eq!(
            serde_json::to_string(&info()).unwrap(),
            r#"{"cache":"c","store_path_hash":"0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm","store_path":"/nix/store/0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm-hello-2.10","references":[],"system":null,"deriver":null,"sigs":["k-1:sig"],"ca":null,"nar_hash":"sha256:00","nar_size":168}"#
        );
    }

    #[test]
    fn nar_info_optional_fields_may_be_absent() {
        let parsed: UploadPathNarInfo = serde_json::from_str(
            r#"{"cache":"c","store_path_hash":"0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm","store_path":"/nix/store/0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm-hello-2.10","sigs":["k-1:sig"],"nar_hash":"sha256:00","nar_size":168,"unknown":1}"#,
        )
        .unwrap();
        assert_eq!(parsed, info());
        assert!(
            serde_json::from_str::<UploadPathNarInfo>(r#"{"cache":"c","nar_size":1}"#).is_err()
        );
    }

    #[test]
    fn result_omits_unknown_sizes() {
        let r = UploadPathResult {
            kind: UploadKind::Uploaded,
            file_size: None,
            frac_deduplicated: None,
        };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"kind":"Uploaded"}"#);
        let r = UploadPathResult {
            kind: UploadKind::Deduplicated,
            file_size: Some(3),
            frac_deduplicated: Some(1.0),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"kind":"Deduplicated","file_size":3,"frac_deduplicated":1.0}"#
        );
        assert!(serde_json::to_string(&UploadKind::Other).is_err());
    }

    #[test]
    fn result_kinds_parse_forward_compatibly() {
        let r: UploadPathResult = serde_json::from_str(
            r#"{"kind":"Deduplicated","file_size":3,"frac_deduplicated":1.0}"#,
        )
        .unwrap();
        assert_eq!(r.kind, UploadKind::Deduplicated);
        assert_eq!(r.file_size, Some(3));
        let r: UploadPathResult = serde_json::from_str(r#"{"kind":"Uploaded"}"#).unwrap();
        assert_eq!(r.kind, UploadKind::Uploaded);
        let r: UploadPathResult =
            serde_json::from_str(r#"{"kind":"Chunked","extra":true}"#).unwrap();
        assert_eq!(r.kind, UploadKind::Other);
    }
}
