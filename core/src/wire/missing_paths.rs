//! `POST /_api/v1/get-missing-paths`: which of a closure's paths the cache
//! lacks, so a push uploads only those.

use serde::{Deserialize, Serialize};

/// The request: store path hashes to look up in one cache. Plain strings:
/// the server parses and bounds them, answering 400 for a bad one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetMissingPathsRequest {
    /// Cache name.
    pub cache: String,
    /// Store path hashes (32 nix-base32 characters each).
    pub store_path_hashes: Vec<String>,
}

/// The response: the subset of the asked hashes the cache does not have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetMissingPathsResponse {
    /// Hashes to upload.
    pub missing_paths: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let req = GetMissingPathsRequest {
            cache: "demo".into(),
            store_path_hashes: vec!["0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm".into()],
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"cache":"demo","store_path_hashes":["0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm"]}"#
        );
        let resp = GetMissingPathsResponse {
            missing_paths: vec!["0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm".into()],
        };
        let json = serde_json::to_string(&resp).unwrap();
        assert_eq!(
            json,
            r#"{"missing_paths":["0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm"]}"#
        );
        let back: GetMissingPathsResponse = serde_json::from_str(&json).unwrap();
        assert_eq!(back, resp);
    }
}
