//! `oidc_policies`: trust policies added by `larder-admin oidc add`
//! (docs/operations.md "Secretless CI with OIDC"). Read on every exchange,
//! which is rare (once per CI job), so a removal takes effect at once.

use std::time::Duration;

use sqlx::Row;

use super::{DbError, Raw, corrupt};
use crate::oidc::TrustPolicy;
use crate::on_conn;

/// Stores `policy`; `false` if its name is taken.
pub async fn insert(raw: Raw<'_>, policy: &TrustPolicy, now: i64) -> Result<bool, DbError> {
    let claims = serde_json::to_string(&policy.claims).map_err(|e| corrupt("claims", e))?;
    let permissions =
        serde_json::to_string(&policy.caches).map_err(|e| corrupt("permissions", e))?;
    let max_validity = i64::try_from(policy.max_validity.as_secs()).unwrap_or(i64::MAX);
    on_conn!(raw, c => {
        let done = sqlx::query(
            "INSERT INTO oidc_policies
                 (name, issuer, audience, claims, permissions, max_validity, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&policy.name)
        .bind(&policy.issuer)
        .bind(&policy.audience)
        .bind(&claims)
        .bind(&permissions)
        .bind(max_validity)
        .bind(now)
        .execute(&mut *c)
        .await?;
        Ok(done.rows_affected() == 1)
    })
}

/// Every stored policy, by name.
pub async fn list(raw: Raw<'_>) -> Result<Vec<TrustPolicy>, DbError> {
    on_conn!(raw, c => {
        let rows = sqlx::query(
            "SELECT name, issuer, audience, claims, permissions, max_validity
             FROM oidc_policies ORDER BY name",
        )
        .fetch_all(&mut *c)
        .await?;
        rows.iter()
            .map(|r| {
                let claims: String = r.try_get("claims")?;
                let permissions: String = r.try_get("permissions")?;
                let max_validity: i64 = r.try_get("max_validity")?;
                Ok(TrustPolicy {
                    name: r.try_get("name")?,
                    issuer: r.try_get("issuer")?,
                    audience: r.try_get("audience")?,
                    claims: serde_json::from_str(&claims).map_err(|e| corrupt("claims", e))?,
                    caches: serde_json::from_str(&permissions)
                        .map_err(|e| corrupt("permissions", e))?,
                    max_validity: Duration::from_secs(max_validity.max(0) as u64),
                })
            })
            .collect()
    })
}

/// Removes the policy `name`; `false` if there was none.
pub async fn delete(raw: Raw<'_>, name: &str) -> Result<bool, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query("DELETE FROM oidc_policies WHERE name = $1")
            .bind(name)
            .execute(&mut *c)
            .await?;
        Ok(done.rows_affected() == 1)
    })
}
