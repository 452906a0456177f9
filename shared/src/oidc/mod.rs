//! Secretless CI: exchanging a CI job's OIDC identity token for a
//! short-lived Larder token (docs/operations.md "Secretless CI with OIDC",
//! docs/protocol.md "OIDC exchange").
//!
//! GitHub Actions, GitLab CI, Buildkite and Forgejo sign a JWT for each job
//! naming the repository, branch and workflow. `POST /_api/v1/oidc/exchange`
//! verifies it against the keys the issuer publishes (OpenID Connect
//! Discovery, then the JWKS, [`issuer`]), matches it against the operator's
//! trust policies ([`policy`]) and mints a Larder token with the first
//! matching policy's grants ([`exchange`]).
//!
//! Checks, in order, each with its own [`OidcError`]: the token's shape and
//! algorithm (RS256 or ES256 only: never `none`, never HMAC, whose key would
//! be public), an issuer some policy trusts (`iss` equal to the policy's
//! issuer, and the discovery document's `issuer` equal to it too), the
//! signature with the JWKS key named by `kid` (of the algorithm's key type),
//! `exp`, `nbf` and `iat` with [`crate::token::LEEWAY_SECS`] of skew, the
//! audience, then the claim matchers. Messages say which check failed and
//! never which policies exist.

pub mod exchange;
mod id_token;
pub mod issuer;
pub mod policy;
mod url;

pub use exchange::{Accepted, exchange};
pub use issuer::{IssuerError, IssuerKeys};
pub use policy::{ClaimPattern, PolicyConfig, TrustPolicy};
pub use url::{UrlProblem, check_fetch_url};

/// Why an ID token was not exchanged. Every message is safe to show the
/// caller: it names the failed check, never a policy.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// Not a JWS compact token of the expected shape.
    #[error("ID token malformed: {0}")]
    Malformed(&'static str),
    /// `alg` is not RS256 or ES256.
    #[error("ID token algorithm not accepted: only RS256 and ES256 are")]
    AlgorithmNotAccepted,
    /// No policy trusts the token's `iss`.
    #[error("ID token issuer not trusted")]
    IssuerNotTrusted,
    /// The issuer's JWKS has no key with the token's `kid`, even after a refresh.
    #[error("ID token key id (kid) not found in the issuer's JWKS")]
    UnknownKey,
    /// The JWKS key named by `kid` is not a key of the token's algorithm.
    #[error("ID token algorithm does not match its key in the issuer's JWKS")]
    KeyMismatch,
    /// The signature does not verify.
    #[error("ID token signature invalid")]
    SignatureInvalid,
    /// No `exp`.
    #[error("ID token has no expiry")]
    MissingExpiry,
    /// `exp` has passed.
    #[error("ID token expired")]
    Expired,
    /// `nbf` or `iat` is in the future.
    #[error("ID token not yet valid")]
    NotYetValid,
    /// No policy for this issuer accepts the token's `aud`.
    #[error("ID token audience not accepted")]
    AudienceNotAccepted,
    /// The identity is valid but no policy grants it anything.
    #[error("ID token claim `{0}` does not match a trust policy")]
    ClaimMismatch(String),
    /// Issued longer ago than the matching policy's `max-validity`.
    #[error("ID token issued too long ago to be exchanged; request a fresh one")]
    TooOld,
    /// The issuer's discovery document or JWKS could not be fetched.
    #[error(transparent)]
    Issuer(#[from] IssuerError),
}

impl OidcError {
    /// A valid identity that may not have a token (403), rather than a
    /// token that is not a valid identity (401).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::ClaimMismatch(_) | Self::TooOld)
    }
}
