//! Token verification: algorithm pinned by the key, signature, then claims and times.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::claims::RawClaims;
use super::key::TokenKey;
use super::{Claims, LEEWAY_SECS, TokenError};

/// Longest token accepted, in bytes: bounds the work an unauthenticated request causes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Checks tokens against the server's key and its bound issuer and audiences.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    key: TokenKey,
    bound_issuer: Option<String>,
    bound_audiences: Option<Vec<String>>,
}

/// The part of the JOSE header we look at before trusting anything.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

impl TokenVerifier {
    /// A verifier for `key`. With `bound_issuer`, a token must carry exactly that
    /// `iss`; with `bound_audiences`, its `aud` must name at least one of them
    /// (so an empty list accepts no token). Unbound, `iss` and `aud` are ignored,
    /// as Attic does.
    pub fn new(
        key: TokenKey,
        bound_issuer: Option<String>,
        bound_audiences: Option<Vec<String>>,
    ) -> Self {
        Self {
            key,
            bound_issuer,
            bound_audiences,
        }
    }

    /// The key tokens are checked against.
    pub fn key(&self) -> &TokenKey {
        &self.key
    }

    /// Verifies `token` at `now` (seconds since the Unix epoch) and returns its claims.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("token too long"));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("not three dot-separated parts"));
        };

        let header: Header = URL_SAFE_NO_PAD
            .decode(header_b64)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(TokenError::Malformed(
                "header is not base64url JSON with `alg`",
            ))?;
        let algorithm = self.key.algorithm();
        if header.alg.parse::<Algorithm>().ok() != Some(algorithm) {
            return Err(TokenError::AlgorithmNotAccepted);
        }
        if header.crit.is_some() {
            // RFC 7515 §4.1.11: extensions we do not understand must be refused.
            return Err(TokenError::Malformed("unsupported critical header"));
        }

        let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
        let valid = jsonwebtoken::crypto::verify(
            signature,
            signed.as_bytes(),
            self.key.decoding_key(),
            algorithm,
        )
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::Base64(_) => {
                TokenError::Malformed("signature is not base64url")
            }
            _ => TokenError::SignatureInvalid,
        })?;
        if !valid {
            return Err(TokenError::SignatureInvalid);
        }

        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
        let raw: RawClaims = serde_json::from_slice(&payload).map_err(TokenError::InvalidClaims)?;
        let claims = Claims::try_from(raw)?;
        self.check_times(&claims, now)?;
        self.check_bindings(&claims)?;
        Ok(claims)
    }

    /// [`verify`](Self::verify) at the system clock's current time.
    pub fn verify_now(&self, token: &str) -> Result<Claims, TokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.verify(token, now)
    }

    /// The time checks of [`verify`](Self::verify) alone: what a cached
    /// verification must still pass at `now` (`exp`, `nbf`, `iat`).
    pub fn check_times(&self, claims: &Claims, now: u64) -> Result<(), TokenError> {
        if now > claims.exp.saturating_add(LEEWAY_SECS) {
            return Err(TokenError::Expired);
        }
        let latest_start = now.saturating_add(LEEWAY_SECS);
        if claims.nbf.is_some_and(|nbf| nbf > latest_start)
            || claims.iat.is_some_and(|iat| iat > latest_start)
        {
            return Err(TokenError::NotYetValid);
        }
        Ok(())
    }

    fn check_bindings(&self, claims: &Claims) -> Result<(), TokenError> {
        if let Some(issuer) = &self.bound_issuer
            && claims.iss.as_ref() != Some(issuer)
        {
            return Err(TokenError::IssuerNotAccepted);
        }
        if let Some(audiences) = &self.bound_audiences
            && !claims.aud.iter().any(|a| audiences.contains(a))
        {
            return Err(TokenError::AudienceNotAccepted);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
