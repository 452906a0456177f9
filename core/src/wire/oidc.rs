//! `POST /_api/v1/oidc/exchange`: a CI job's OIDC identity token for a
//! short-lived Larder token (docs/protocol.md "OIDC exchange").

use serde::{Deserialize, Serialize};

/// The request: the ID token the CI system issued to the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcExchangeRequest {
    /// The ID token (a JWT signed by the CI system's issuer).
    pub token: String,
}

/// The response: the minted token and what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OidcExchangeResponse {
    /// The Larder token, for `Authorization: Bearer`.
    pub token: String,
    /// Its subject, `oidc:<policy>:<the ID token's sub>`: what
    /// `larder-admin revoke-token --sub` takes.
    pub subject: String,
    /// Its `jti`.
    pub jti: String,
    /// Its expiry, Unix seconds.
    pub expires_at: u64,
    /// Its `caches` claim: pattern → permissions.
    pub caches: serde_json::Value,
}
