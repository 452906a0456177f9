//! JSON Web Tokens compatible with Attic's (`zhaofengli/attic`, `token/src/lib.rs`).
//!
//! A token is a JWT signed with the server's one key (`[jwt.signing]`): RS256
//! (`token-rs256-secret-base64`, or `token-rs256-pubkey-base64` on replicas that
//! only verify) or HS256 (`token-hs256-secret-base64`). Every config value is
//! base64: of a PEM file for RSA (PKCS#1 or PKCS#8), of the raw secret for HMAC.
//!
//! # Claims
//!
//! ```json
//! {
//!   "sub": "ci",
//!   "exp": 4102444800,
//!   "nbf": 1700000000,
//!   "iat": 1700000000,
//!   "jti": "01HF3Z9W6X5V4T3S2R1Q0P9N8M",
//!   "https://jwt.attic.rs/v1": {
//!     "caches": {
//!       "team-ci": { "r": 1 },
//!       "team-*": { "r": 1, "w": 1, "cc": 1 }
//!     }
//!   }
//! }
//! ```
//!
//! - `sub` (required) names the bearer in logs and revocations; `exp` (required)
//!   is the expiry; `nbf` is optional.
//! - `iat` and `jti` (a ULID) are added by Larder when it mints; Attic's tokens
//!   carry only `sub`, `exp` and `nbf`, and a token without `iat` counts as issued
//!   at its `nbf` ([`Claims::issued_at`]).
//! - `iss` and `aud` (a string or an array) are checked only when the server binds
//!   them (`token-bound-issuer`, `token-bound-audiences`); minted tokens carry them.
//! - `https://jwt.attic.rs/v1` → `caches` maps a cache name or pattern to
//!   permissions: `r` pull, `w` push, `d` delete, `cc` create cache, `cr`
//!   configure cache, `cq` configure retention, `cd` destroy cache. A permission
//!   is granted by `1` (or `true`); absent or `0`/`false` is not granted. Larder
//!   writes only granted permissions, as `1`. Unknown permission keys are ignored.
//!
//! # Which entry applies to a cache
//!
//! Cache names match `^[A-Za-z0-9][A-Za-z0-9-_+]{0,49}$`; a pattern may also
//! hold `*` (any run of characters, the empty one included) and `?` (exactly one
//! character). For a cache name, in order:
//!
//! 1. the entry whose key is exactly the name, if any;
//! 2. otherwise the **first** pattern in the token's JSON order that matches;
//! 3. otherwise no permission at all.
//!
//! Only one entry applies: the permissions of different patterns are never
//! merged, so `{"all-*": {"r": 1}, "all-ci-*": {"w": 1}}` grants `all-ci-x` pull
//! only. A token whose `caches` holds an invalid pattern is rejected as a whole.
//!
//! # Verification ([`TokenVerifier`])
//!
//! The algorithm is pinned by the configured key: a token whose header names
//! another one (`none`, HS256 for an RSA key, an HMAC signed with the RSA public
//! key as secret, RS384…) is rejected before its signature is looked at. Times
//! allow [`LEEWAY_SECS`] of clock skew: a token is accepted until `exp + 60`
//! inclusive, and from `nbf - 60` (likewise `iat - 60`: a token cannot be issued
//! in the future). Each rejection is its own [`TokenError`] variant, whose
//! message is safe to show the client.

mod claims;
mod duration;
mod key;
mod mint;
mod pattern;
mod permission;
mod revocation;
mod verify;

pub use claims::{CacheAccess, Claims};
pub use duration::{ValidityError, parse_validity};
pub use key::{Hs256Secret, KeyError, Rs256KeyPair, Rs256PublicKey, TokenKey};
pub use mint::{ClaimsBuilder, mint};
pub(crate) use pattern::glob_match;
pub use pattern::{CachePattern, CachePatternError};
pub use permission::{CachePermissions, Permission};
pub use revocation::{Revocation, Revocations};
pub use verify::TokenVerifier;

/// The JWT claim holding Attic's (and Larder's) access rules.
pub const CLAIM_NAMESPACE: &str = "https://jwt.attic.rs/v1";

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 60;

/// Why a token was rejected or could not be minted.
///
/// The rejection messages (all variants up to [`TokenError::AudienceNotAccepted`])
/// are written for the client: the API puts them in 401 bodies.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, or the header is not a JSON object with `alg`.
    #[error("token malformed: {0}")]
    Malformed(&'static str),
    /// The header names an algorithm other than the configured key's.
    #[error("token algorithm not accepted")]
    AlgorithmNotAccepted,
    /// The signature does not verify with the configured key.
    #[error("token signature invalid")]
    SignatureInvalid,
    /// Signed correctly, but the claims do not have the expected shape.
    #[error("token claims invalid: {0}")]
    InvalidClaims(#[source] serde_json::Error),
    /// The token has no `exp` claim.
    #[error("token has no expiry")]
    MissingExpiry,
    /// `exp` is more than [`LEEWAY_SECS`] in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` or `iat` is more than [`LEEWAY_SECS`] in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// The server binds an issuer and the token names another one, or none.
    #[error("token issuer not accepted")]
    IssuerNotAccepted,
    /// The server binds audiences and the token names none of them.
    #[error("token audience not accepted")]
    AudienceNotAccepted,
    /// Minting with a key that can only verify (an RS256 public key).
    #[error(
        "cannot mint tokens with an RS256 public key (token-rs256-pubkey-base64): \
         configure token-rs256-secret-base64 or token-hs256-secret-base64"
    )]
    VerifyOnlyKey,
    /// `now + validity` does not fit a JWT timestamp (year 9999).
    #[error("token expiry out of range")]
    ExpiryOutOfRange,
    /// The JWT library failed to sign.
    #[error("token signing failed: {0}")]
    Signing(#[source] jsonwebtoken::errors::Error),
}
