//! Deciding an exchange: which policy, if any, an ID token satisfies, and
//! for how long the minted token may live.
//!
//! Policies are tried in order (the config file's, then the database's by
//! name); the **first** whose audience and claims match wins, and grants
//! are never merged, as with a token's cache patterns. The minted token
//! expires `max-validity` after the ID token was issued (its `iat`, else
//! now): exchanging one ID token again, or late, never extends the window
//! it opens.

use std::time::Duration;

use serde_json::Value;

use super::OidcError;
use super::id_token::IdToken;
use super::issuer::{IssuerKeys, Lookup};
use super::policy::TrustPolicy;

/// An accepted exchange: what to mint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted<'p> {
    /// The policy that matched.
    pub policy: &'p TrustPolicy,
    /// The minted token's subject: `oidc:<policy>:<ID token sub>`.
    pub subject: String,
    /// How long from now the minted token lives (whole seconds, at least 1).
    pub validity: Duration,
}

/// Verifies `token` against the issuer's keys and `policies` at `now`.
pub async fn exchange<'p>(
    policies: &'p [TrustPolicy],
    keys: &IssuerKeys,
    token: &str,
    now: u64,
) -> Result<Accepted<'p>, OidcError> {
    let id = IdToken::parse(token)?;
    let issuer = id.issuer().ok_or(OidcError::IssuerNotTrusted)?;
    let trusting: Vec<&TrustPolicy> = policies.iter().filter(|p| p.issuer == issuer).collect();
    if trusting.is_empty() {
        return Err(OidcError::IssuerNotTrusted);
    }
    // Only now, for an issuer a policy names, may the network be used.
    let key = match keys.key(issuer, id.kid.as_deref(), id.alg).await? {
        Lookup::Found(key) => key,
        Lookup::Unknown => return Err(OidcError::UnknownKey),
    };
    id.verify_signature(&key)?;
    id.check_times(now)?;
    let for_audience: Vec<&TrustPolicy> = trusting
        .into_iter()
        .filter(|p| id.has_audience(&p.audience))
        .collect();
    if for_audience.is_empty() {
        return Err(OidcError::AudienceNotAccepted);
    }
    let sub = id
        .claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(OidcError::Malformed("no `sub` claim"))?;
    let Some(policy) = for_audience
        .iter()
        .find(|p| p.mismatches(&id.claims).is_empty())
        .copied()
    else {
        // Name a claim of the closest policy: the caller knows their own
        // claims, and learns no value, name or grant of any policy.
        let closest = for_audience
            .iter()
            .map(|p| p.mismatches(&id.claims))
            .min_by_key(Vec::len)
            .unwrap_or_default();
        let claim = closest.first().copied().unwrap_or("sub");
        return Err(OidcError::ClaimMismatch(claim.to_owned()));
    };
    let issued = id.time("iat")?.unwrap_or(now).min(now);
    let expires = issued.saturating_add(policy.max_validity.as_secs());
    if expires <= now {
        return Err(OidcError::TooOld);
    }
    Ok(Accepted {
        policy,
        subject: format!("oidc:{}:{sub}", policy.name),
        validity: Duration::from_secs(expires - now),
    })
}
