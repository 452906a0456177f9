//! What can go wrong talking to the server, and which failures are worth a
//! retry.

use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request never got an HTTP answer: DNS, connect, reset, timeout,
    /// or the request body failed.
    #[error("{call}: {}", error_chain(source))]
    Transport {
        /// `METHOD URL`.
        call: Call,
        /// What reqwest reported.
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("{call}: {status}{}: {message}", kind.as_deref().map(|k| format!(" {k}")).unwrap_or_default())]
    Status {
        /// `METHOD URL`.
        call: Call,
        /// The HTTP status.
        status: StatusCode,
        /// The `error` field of the JSON body (`NoSuchCache`, …).
        kind: Option<String>,
        /// The `message` field, or the start of a non-JSON body.
        message: String,
        /// `Retry-After`, in seconds, when the server sent one.
        retry_after: Option<Duration>,
    },
    /// A success status with a body that is not what the API promises.
    #[error("{call}: unexpected response: {source}")]
    Decode {
        /// `METHOD URL`.
        call: Call,
        /// What serde said.
        source: serde_json::Error,
    },
    /// The configured endpoint and path do not make a URL.
    #[error("invalid URL {url:?}: {source}")]
    Url {
        /// The text that failed to parse.
        url: String,
        /// Why.
        source: UrlParseError,
    },
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    /// A request body could not be encoded.
    #[error("cannot encode the request: {0}")]
    Encode(serde_json::Error),
}

/// The `url` crate's parse error, named through reqwest (which re-exports
/// `Url` but not its error type).
pub type UrlParseError = <reqwest::Url as std::str::FromStr>::Err;

/// `METHOD URL`, to say which call failed.
#[derive(Debug, Clone)]
pub struct Call {
    /// HTTP method.
    pub method: reqwest::Method,
    /// Full URL.
    pub url: String,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.url)
    }
}

/// reqwest's `Display` stops at the outermost layer ("error sending
/// request"); the cause ("connection refused") is what a user needs.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

impl ApiError {
    /// Whether trying again may help: no answer at all, a 5xx, 408 or 429.
    /// Everything else (4xx, a body we cannot read) would fail again. A
    /// full staging area is not a failure to retry a few times but a
    /// backlog to wait out ([`Self::is_staging_full`]).
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Transport { source, .. } => !source.is_builder() && !source.is_decode(),
            ApiError::Status { .. } if self.is_staging_full() => false,
            ApiError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            ApiError::Decode { .. }
            | ApiError::Url { .. }
            | ApiError::Client(_)
            | ApiError::Encode(_) => false,
        }
    }

    /// The `error` kind of an error response (`ChunksMissing`, …).
    pub fn kind(&self) -> Option<&str> {
        match self {
            ApiError::Status { kind, .. } => kind.as_deref(),
            _ => None,
        }
    }

    /// The server's staging quota is reached (`503` `StagingFull`): its
    /// workers are behind, and an upload succeeds once they catch up.
    pub fn is_staging_full(&self) -> bool {
        matches!(
            self,
            ApiError::Status { status, kind: Some(kind), .. }
                if *status == StatusCode::SERVICE_UNAVAILABLE && kind == "StagingFull"
        )
    }

    /// How long the server asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}
