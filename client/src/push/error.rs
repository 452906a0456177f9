//! Why a path could not be uploaded, and which failures are worth a retry.

use crate::api::ApiError;
use crate::api::retry::Transient;
use crate::nix::NixError;

/// Why a path could not be uploaded.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// `nix-store --dump` could not be started.
    #[error(transparent)]
    Nix(#[from] NixError),
    /// `nix-store --dump` failed while streaming.
    #[error("{0}")]
    Dump(String),
    /// The server or the network failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The server's staging stayed full for as long as a push waits.
    #[error(
        "gave up after waiting {} for the server's staging to drain: {last}",
        humantime::format_duration(std::time::Duration::from_secs(waited.as_secs()))
    )]
    StagingFull {
        /// How long this upload waited.
        waited: std::time::Duration,
        /// The last refusal.
        last: ApiError,
    },
    /// A reference of the path failed, so the path was not committed (the
    /// cache must not hold a path without its closure); its chunks may
    /// have been sent already.
    #[error("a reference failed to upload")]
    ReferenceFailed,
}

impl Transient for UploadError {
    fn is_transient(&self) -> bool {
        match self {
            UploadError::Api(e) => e.is_transient(),
            UploadError::Nix(_)
            | UploadError::Dump(_)
            | UploadError::StagingFull { .. }
            | UploadError::ReferenceFailed => false,
        }
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            UploadError::Api(e) => e.retry_after(),
            _ => None,
        }
    }
}
