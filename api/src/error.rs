//! The one place where errors become HTTP: status, JSON body
//! `{"code", "error", "message"}` (docs/protocol.md), and the single log line for 5xx.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use larder_core::chunk::ChunkHash;
use larder_core::nix::hash::NarHash;
use larder_core::nix::store_path::StorePathHash;
use larder_core::wire::ErrorBody;
use larder_shared::db::DbError;
use larder_shared::signing_keys::KeyError;
use larder_shared::storage::StorageError;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or invalid credentials, or a private cache the caller may not see.
    /// The message never depends on whether the cache or path exists.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller can see the cache but lacks this permission.
    #[error("permission denied: {0}")]
    PermissionDenied(&'static str),
    /// The cache does not exist (said only to callers with rights on the name).
    #[error("no such cache")]
    NoSuchCache,
    /// The path or NAR is not in this cache.
    #[error("no such object")]
    NoSuchObject,
    /// Creating a cache whose name is taken.
    #[error("cache already exists")]
    CacheAlreadyExists,
    /// An upload for a path this cache already serves with another NAR
    /// (first push wins; replacing needs the replace flag and `d`).
    #[error(
        "{store_path_hash} is already in this cache with a different NarHash than {nar_hash}; \
         published paths are not replaced (push with --replace, which needs the d permission, \
         or delete the path first)"
    )]
    PathConflict {
        /// The path.
        store_path_hash: StorePathHash,
        /// The NarHash the rejected upload claimed.
        nar_hash: NarHash,
    },
    /// Malformed request: bad JSON, bad store path, bad hash, bad name.
    #[error("{0}")]
    BadRequest(String),
    /// The uploaded NAR is not what its metadata claims, or not a NAR.
    #[error("{0}")]
    InvalidNar(String),
    /// A header, preamble or body over its limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A body without the `Content-Type` the route reads.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The client stopped sending (a stalled upload).
    #[error("{0}")]
    RequestTimeout(String),
    /// A staged upload was taken as abandoned (older than `[staging]
    /// max-age`) before its commit: its copy is gone, nothing was recorded.
    #[error(
        "the staged upload was older than [staging] max-age when it was to be recorded \
         and has been removed; push the path again"
    )]
    StagedCopyExpired,
    /// A chunk-push commit lists chunks the caller has not sent and may not
    /// take from the cache (docs/protocol.md "Chunk-level push").
    #[error("{count} chunks of the NAR were not sent (first: {first}); send them, then commit")]
    ChunksMissing {
        /// How many.
        count: usize,
        /// The first one, hex.
        first: String,
    },
    /// A chunk-push publish whose prepared NAR is not here: never prepared
    /// (or for another cache, token subject or NAR), swept after `[staging]
    /// max-age`, or staged on another replica's local disk. Nothing was
    /// recorded; the client commits the NAR in one step instead.
    #[error("the prepared NAR is gone or was never prepared here; commit the NAR in one step")]
    PreparedMissing,
    /// A chunk-push commit names a chunk list this replica does not
    /// remember (docs/protocol.md "Chunk-level push"); the client lists
    /// the chunks instead.
    #[error("chunk list {0} is not known here; list the NAR's chunks")]
    ChunkListUnknown(ChunkHash),
    /// The staging quota is reached (`[staging] max-bytes`, `max-nars`):
    /// workers are behind, the client should retry after `retry_after`
    /// seconds. A 503 that is not a failure: not logged as one, and its
    /// message is shown.
    #[error(
        "staging is full: {staged_nars} NARs ({staged_bytes} bytes) are waiting for ingest; \
         retry in {retry_after} s"
    )]
    StagingFull {
        /// NARs staged and not yet ingested.
        staged_nars: u64,
        /// Their bytes.
        staged_bytes: u64,
        /// Seconds, sent as `Retry-After`.
        retry_after: u64,
    },
    /// A `Range` that no byte of the representation satisfies.
    #[error("range not satisfiable: the file has {len} bytes")]
    RangeNotSatisfiable {
        /// The representation's length, for `Content-Range: bytes */len`.
        len: u64,
    },
    /// Route unknown.
    #[error("not found")]
    NotFound,
    /// Route known, method not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Database failure (details logged, hidden from the caller).
    #[error(transparent)]
    Database(#[from] DbError),
    /// Storage failure (details logged, hidden from the caller).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A CI identity token that is valid but that no trust policy grants
    /// anything (`/_api/v1/oidc/exchange`).
    #[error("{0}")]
    Forbidden(String),
    /// A trusted OIDC issuer's discovery document or JWKS could not be
    /// fetched (details logged; the message names no URL).
    #[error("the CI issuer's keys could not be fetched; try again later")]
    IssuerUnavailable(#[source] larder_shared::oidc::IssuerError),
    /// Anything else that is our fault.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Refused exchanges: 401 for a token that is not a valid identity, 403 for
/// an identity no policy grants, 502 when the issuer cannot be reached.
impl From<larder_shared::oidc::OidcError> for ApiError {
    fn from(e: larder_shared::oidc::OidcError) -> Self {
        match e {
            larder_shared::oidc::OidcError::Issuer(i) => ApiError::IssuerUnavailable(i),
            e if e.is_forbidden() => ApiError::Forbidden(e.to_string()),
            e => ApiError::Unauthorized(e.to_string()),
        }
    }
}

/// Key names the caller chose are their mistake; everything else about
/// signing keys (KEK, sealed rows, key files) is ours.
impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::NameTaken(_) | KeyError::Name(_) => ApiError::BadRequest(e.to_string()),
            KeyError::Db(db) => ApiError::Database(db),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl ApiError {
    /// Status and the stable error kind string clients match on.
    pub fn status_and_kind(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::PermissionDenied(_) | ApiError::Forbidden(_) => {
                (StatusCode::FORBIDDEN, "PermissionDenied")
            }
            ApiError::NoSuchCache => (StatusCode::NOT_FOUND, "NoSuchCache"),
            ApiError::NoSuchObject => (StatusCode::NOT_FOUND, "NoSuchObject"),
            ApiError::CacheAlreadyExists => (StatusCode::CONFLICT, "CacheAlreadyExists"),
            ApiError::PathConflict { .. } => (StatusCode::CONFLICT, "PathConflict"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            ApiError::InvalidNar(_) => (StatusCode::BAD_REQUEST, "InvalidNar"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType")
            }
            ApiError::RequestTimeout(_) | ApiError::StagedCopyExpired => {
                (StatusCode::REQUEST_TIMEOUT, "RequestTimeout")
            }
            ApiError::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "RangeNotSatisfiable")
            }
            ApiError::StagingFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, "StagingFull"),
            ApiError::ChunksMissing { .. } => (StatusCode::CONFLICT, "ChunksMissing"),
            ApiError::PreparedMissing => (StatusCode::CONFLICT, "PreparedMissing"),
            ApiError::ChunkListUnknown(_) => (StatusCode::CONFLICT, "ChunkListUnknown"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "NotFound"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            ApiError::Database(_) => (StatusCode::INTERNAL_SERVER_ERROR, "DatabaseError"),
            ApiError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "StorageError"),
            ApiError::IssuerUnavailable(_) => (StatusCode::BAD_GATEWAY, "IssuerUnavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status_and_kind();
        let unsatisfied = match self {
            ApiError::RangeNotSatisfiable { len } => {
                Some(crate::byte_range::unsatisfied_range(len))
            }
            _ => None,
        };
        let retry_after = match self {
            ApiError::StagingFull { retry_after, .. } => Some(retry_after),
            _ => None,
        };
        let message = if status.is_server_error() && retry_after.is_none() {
            tracing::error!(error = %ErrorChain(&self), kind, "request failed");
            match self {
                ApiError::IssuerUnavailable(_) => self.to_string(),
                _ => "internal server error; see the server log".to_owned(),
            }
        } else {
            // The kind only: a refusal's message may quote what the caller
            // sent. Enough to tell which fallback a client took.
            tracing::debug!(status = status.as_u16(), kind, "request refused");
            self.to_string()
        };
        let body = ErrorBody {
            code: Some(status.as_u16()),
            error: Some(kind.to_owned()),
            message: Some(message),
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(range) = unsatisfied {
            response
                .headers_mut()
                .insert(axum::http::header::CONTENT_RANGE, range);
        }
        if let Some(secs) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            // RFC 9110 requires a challenge; Basic lets netrc-based clients answer it.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"larder\""),
            );
        }
        response
    }
}

/// Extractor rejections (bad JSON, bad path) become our JSON errors too,
/// keeping the status axum chose (413 for a body over its limit, 415 for a
/// missing `Content-Type`), except that a JSON body of the wrong shape is a
/// plain 400 like every other malformed request.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        ApiError::from_status(r.status(), r.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(r: axum::extract::rejection::PathRejection) -> Self {
        ApiError::from_status(r.status(), r.body_text())
    }
}

impl ApiError {
    /// The error for a status some other layer chose (extractor
    /// rejections, the safety net of [`json_errors`]).
    fn from_status(status: StatusCode, message: String) -> Self {
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(message),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(message),
            StatusCode::NOT_FOUND => ApiError::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::REQUEST_TIMEOUT => ApiError::RequestTimeout(message),
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized(message),
            s if s.is_server_error() => ApiError::Internal(message),
            _ => ApiError::BadRequest(message),
        }
    }
}

/// Largest plain-text error body [`json_errors`] reads to reword it.
const MAX_FOREIGN_ERROR: usize = 64 * 1024;

/// Safety net, layered around the whole router: an error response that some
/// layer or extractor wrote as plain text (anything not already JSON) is
/// rewritten as the contract's JSON error with the same status, so no
/// failure escapes the `{"code","error","message"}` shape.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let message = match axum::body::to_bytes(body, MAX_FOREIGN_ERROR).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).trim().to_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    let mut rewritten = ApiError::from_status(status, message).into_response();
    // Keep the status even where it has no variant of its own.
    *rewritten.status_mut() = status;
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name, value.clone());
        }
    }
    rewritten
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

/// Displays an error with its sources (`a: b: c`), so a storage failure's log
/// line names the status or transport error behind it.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
