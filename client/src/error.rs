//! The error a command ends with: each module's own error, wrapped, so
//! `main` prints one message and picks the exit status.

use crate::api::ApiError;
use crate::cache::CacheError;
use crate::config::ConfigError;
use crate::push::PushError;
use crate::use_cache::UseError;

/// Anything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A server call.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// `larder cache …`.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// `larder push`.
    #[error(transparent)]
    Push(#[from] PushError),
    /// `larder use`.
    #[error(transparent)]
    Use(#[from] UseError),
    /// `larder pin`, `unpin`, `pins`, `delete`.
    #[error(transparent)]
    Pin(#[from] crate::pins::PinError),
    /// `larder queue …`.
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    /// `larder watch-store`.
    #[error(transparent)]
    WatchStore(#[from] crate::watch_store::WatchError),
    /// `larder login --oidc`.
    #[error(transparent)]
    OidcLogin(#[from] crate::login::oidc::OidcLoginError),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}
