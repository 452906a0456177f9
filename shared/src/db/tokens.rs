//! `tokens` and `token_revocations`: what `larder-admin` minted and revoked.
//!
//! Verification never queries these per request: API replicas load the
//! revocations every `[jwt] revocation-refresh` (see `token::Revocations`).

use sqlx::{AssertSqlSafe, Row};

use super::{DbError, Raw};
use crate::on_conn;
use crate::token::Revocation;

/// A minted token as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Token id.
    pub jti: String,
    /// Subject.
    pub subject: String,
    /// The permissions claim as JSON.
    pub permissions: String,
    /// Issued at (Unix seconds).
    pub issued_at: i64,
    /// Expiry (Unix seconds).
    pub expires_at: i64,
    /// Last request seen with it, to within `[access] flush-interval`.
    pub last_used_at: Option<i64>,
}

impl TokenRecord {
    /// The audit event of this token's mint (written beside its record by
    /// `larder-admin make-token` and the embedded default's first start).
    pub fn mint_event(&self) -> Result<crate::audit::AuditEvent, serde_json::Error> {
        Ok(crate::audit::AuditEvent::TokenMint {
            token_subject: self.subject.clone(),
            token_jti: self.jti.clone(),
            expires_at: self.expires_at,
            permissions: serde_json::from_str(&self.permissions)?,
        })
    }

    /// The record of a token Larder minted (`None` without a `jti`).
    pub fn from_claims(claims: &crate::token::Claims) -> Option<Self> {
        Some(Self {
            jti: claims.jti.clone()?,
            subject: claims.sub.clone(),
            permissions: serde_json::to_string(&claims.caches).ok()?,
            issued_at: claims.issued_at() as i64,
            expires_at: claims.exp as i64,
            last_used_at: None,
        })
    }
}

/// Records a minted token.
pub async fn record(raw: Raw<'_>, t: &TokenRecord) -> Result<(), DbError> {
    on_conn!(raw, c => {
        sqlx::query(
            "INSERT INTO tokens (jti, subject, permissions, issued_at, expires_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(&t.jti)
        .bind(&t.subject)
        .bind(&t.permissions)
        .bind(t.issued_at)
        .bind(t.expires_at)
        .execute(&mut *c)
        .await?;
        Ok(())
    })
}

/// Every recorded token, newest first.
pub async fn list(raw: Raw<'_>) -> Result<Vec<TokenRecord>, DbError> {
    on_conn!(raw, c => {
        let rows = sqlx::query(
            "SELECT jti, subject, permissions, issued_at, expires_at, last_used_at FROM tokens ORDER BY issued_at DESC, jti",
        )
        .fetch_all(&mut *c)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenRecord {
                    jti: r.try_get("jti")?,
                    subject: r.try_get("subject")?,
                    permissions: r.try_get("permissions")?,
                    issued_at: r.try_get("issued_at")?,
                    expires_at: r.try_get("expires_at")?,
                    last_used_at: r.try_get("last_used_at")?,
                })
            })
            .collect()
    })
}

/// Records that tokens (by `jti`, ≤ [`super::chunks::BATCH`]) were used at
/// `at`; a token larder-admin did not mint has no row and is skipped.
pub async fn mark_used(raw: Raw<'_>, jtis: &[String], at: i64) -> Result<u64, DbError> {
    if jtis.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "UPDATE tokens SET last_used_at = $1
         WHERE (last_used_at IS NULL OR last_used_at < $1) AND jti IN ({})",
        super::placeholders(2, jtis.len())
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql)).bind(at);
        for j in jtis {
            q = q.bind(j);
        }
        Ok(q.execute(&mut *c).await?.rows_affected())
    })
}

/// The recorded expiry of a token, to bound how long its revocation matters.
pub async fn expiry(raw: Raw<'_>, jti: &str) -> Result<Option<i64>, DbError> {
    on_conn!(raw, c => {
        let row = sqlx::query("SELECT expires_at FROM tokens WHERE jti = $1")
            .bind(jti)
            .fetch_optional(&mut *c)
            .await?;
        row.map(|r| r.try_get::<i64, _>("expires_at")).transpose().map_err(DbError::from)
    })
}

/// Records a revocation.
pub async fn revoke(raw: Raw<'_>, r: &Revocation, now: i64) -> Result<(), DbError> {
    let (jti, subject, before) = match r {
        Revocation::Token { jti } => (Some(jti.as_str()), None, None),
        Revocation::Subject {
            subject,
            issued_before,
        } => (None, Some(subject.as_str()), Some(*issued_before as i64)),
    };
    on_conn!(raw, c => {
        sqlx::query(
            "INSERT INTO token_revocations (jti, subject, issued_before, expires_at, revoked_at)
             VALUES ($1, $2, $3, NULL, $4)",
        )
        .bind(jti)
        .bind(subject)
        .bind(before)
        .bind(now)
        .execute(&mut *c)
        .await?;
        Ok(())
    })
}

/// Drops revocations that can no longer matter: those of single tokens
/// recorded as expired (beyond the verifier's leeway) before `now`.
pub async fn prune_revocations(raw: Raw<'_>, now: i64) -> Result<u64, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query(
            "DELETE FROM token_revocations WHERE jti IN (SELECT jti FROM tokens WHERE expires_at < $1)",
        )
        .bind(now - 120)
        .execute(&mut *c)
        .await?;
        Ok(done.rows_affected())
    })
}

/// Drops the records of tokens that expired before `before`, unless a
/// revocation still names them (those go with [`prune_revocations`]
/// first). Every OIDC exchange records a token, so without this the table
/// would grow by one row per CI job forever; the mint stays in the audit
/// trail.
pub async fn prune_expired(raw: Raw<'_>, before: i64) -> Result<u64, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query(
            "DELETE FROM tokens WHERE expires_at < $1
             AND jti NOT IN (SELECT jti FROM token_revocations WHERE jti IS NOT NULL)",
        )
        .bind(before)
        .execute(&mut *c)
        .await?;
        Ok(done.rows_affected())
    })
}

/// Every revocation still in force.
pub async fn revocations(raw: Raw<'_>) -> Result<Vec<Revocation>, DbError> {
    let sql = "SELECT jti, subject, issued_before FROM token_revocations ORDER BY id";
    on_conn!(raw, c => {
        let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(&mut *c).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let jti: Option<String> = r.try_get("jti")?;
            let subject: Option<String> = r.try_get("subject")?;
            let before: Option<i64> = r.try_get("issued_before")?;
            match (jti, subject, before) {
                (Some(jti), _, _) => out.push(Revocation::Token { jti }),
                (None, Some(subject), Some(b)) => out.push(Revocation::Subject {
                    subject,
                    issued_before: b.max(0) as u64,
                }),
                _ => {}
            }
        }
        Ok(out)
    })
}
