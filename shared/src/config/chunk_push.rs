//! `[chunk-push]`: Larder's chunk-level push API (docs/protocol.md
//! "Chunk-level push").

use serde::{Deserialize, Serialize};

/// `[chunk-push]`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ChunkPushConfig {
    /// Whether `/_api/larder/v1` chunk push answers; off, its routes are a
    /// 404 and `larder push` falls back to whole-NAR upload.
    #[serde(default = "d_enabled")]
    pub enabled: bool,
    /// Largest chunk batch body, in bytes: what one request may make the
    /// API hold (it is verified whole before it is stored).
    #[serde(default = "d_max_batch_bytes")]
    pub max_batch_bytes: u64,
}

fn d_enabled() -> bool {
    true
}

fn d_max_batch_bytes() -> u64 {
    16 * 1024 * 1024
}

impl Default for ChunkPushConfig {
    fn default() -> Self {
        Self {
            enabled: d_enabled(),
            max_batch_bytes: d_max_batch_bytes(),
        }
    }
}
