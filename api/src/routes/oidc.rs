//! `POST /_api/v1/oidc/exchange`: a CI job's identity token for a
//! short-lived Larder token (docs/protocol.md "OIDC exchange"; the checks
//! are [`larder_shared::oidc`]'s).
//!
//! The minted token is recorded like make-token's (so `list-tokens` shows
//! it and `revoke-token --sub` stops it) with its audit row, in one
//! transaction; the ID token itself is never stored or logged.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{Extensions, HeaderMap};

use larder_core::wire::{OidcExchangeRequest, OidcExchangeResponse};
use larder_shared::audit::Actor;
use larder_shared::db::tokens::{self, TokenRecord};
use larder_shared::db::{audit, oidc_policies, unix_now};
use larder_shared::oidc::{self, TrustPolicy};
use larder_shared::token::{ClaimsBuilder, TokenKey, mint};

use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::state::AppState;

/// The handler; needs no credentials but the ID token in the body.
#[tracing::instrument(skip_all, fields(policy = tracing::field::Empty, subject = tracing::field::Empty))]
pub async fn exchange(
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: Extensions,
    JsonBody(req): JsonBody<OidcExchangeRequest>,
) -> ApiResult<Json<OidcExchangeResponse>> {
    let policies = policies(&state).await?;
    let now = unix_now();
    let accepted = oidc::exchange(&policies, &state.oidc, &req.token, now as u64)
        .await
        .inspect_err(|e| tracing::info!(error = %e, "OIDC exchange refused"))?;
    let span = tracing::Span::current();
    span.record("policy", accepted.policy.name.as_str());
    span.record("subject", accepted.subject.as_str());

    let mut builder = ClaimsBuilder::new(accepted.subject.clone(), accepted.validity, now as u64)
        .issuer(state.config.jwt.token_bound_issuer.clone())
        .audiences(state.config.jwt.token_bound_audiences.clone());
    for (pattern, permissions) in accepted.policy.caches.entries() {
        builder = builder.grant_all(pattern, permissions.granted());
    }
    let claims = builder
        .build()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let key = TokenKey::from_config(&state.config.jwt.signing)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let token = mint(&key, &claims).map_err(|e| ApiError::Internal(e.to_string()))?;
    let record = TokenRecord::from_claims(&claims)
        .ok_or_else(|| ApiError::Internal("minted claims lack a jti".into()))?;
    let event = record
        .mint_event()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let actor = Actor {
        subject: Some(record.subject.clone()),
        jti: Some(record.jti.clone()),
        client_addr: crate::client_addr::client_addr(
            extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
            &headers,
            &state.config.http.trusted_proxies,
        )
        .map(|a| a.to_string()),
    };
    let mut tx = state.db.begin().await?;
    tokens::record(tx.raw(), &record).await?;
    audit::insert(tx.raw(), now, &actor, &event).await?;
    tx.commit().await?;
    tracing::info!(jti = %record.jti, expires_at = claims.exp, "OIDC exchange minted a token");
    Ok(Json(OidcExchangeResponse {
        token,
        subject: record.subject,
        jti: record.jti,
        expires_at: claims.exp,
        caches: serde_json::to_value(&claims.caches)
            .map_err(|e| ApiError::Internal(e.to_string()))?,
    }))
}

/// The config file's policies, then the database's; a stored policy whose
/// name the file also uses is ignored (`oidc add` refuses such names).
async fn policies(state: &AppState) -> ApiResult<Vec<TrustPolicy>> {
    let mut all = state.config.oidc.trust_policies();
    let mut conn = state.db.conn().await?;
    for stored in oidc_policies::list(conn.raw()).await? {
        if all.iter().any(|p| p.name == stored.name) {
            tracing::warn!(policy = %stored.name, "a stored OIDC policy has a config file policy's name; ignored");
        } else {
            all.push(stored);
        }
    }
    Ok(all)
}
