//! `audit_log`: the append-only trail of [`crate::audit::AuditEvent`]s.
//!
//! Callers insert in the transaction of the change they record, so a change
//! and its record commit together. Nothing updates a row; the one delete is
//! the operator's [`prune_before`].

use sqlx::{AssertSqlSafe, Row};

use super::{DbError, Raw};
use crate::audit::{Actor, AuditEvent};
use crate::on_conn;

/// A stored event.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditRecord {
    /// Row id, increasing: the paging key.
    pub id: i64,
    /// When (Unix seconds).
    pub at: i64,
    /// [`AuditEvent::kind`].
    pub kind: String,
    /// Cache name (the cache may since have been destroyed).
    pub cache: Option<String>,
    /// Who.
    pub subject: Option<String>,
    /// The token's id.
    pub jti: Option<String>,
    /// The client's address.
    pub client_addr: Option<String>,
    /// Store path.
    pub store_path: Option<String>,
    /// `sha256:<nix-base32>`.
    pub nar_hash: Option<String>,
    /// Kind-specific fields.
    pub detail: serde_json::Value,
}

/// Which events to read; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// At or after (Unix seconds).
    pub since: Option<i64>,
    /// Exact subject.
    pub subject: Option<String>,
    /// Exact token id.
    pub jti: Option<String>,
    /// Exact cache name.
    pub cache: Option<String>,
    /// Exact kind.
    pub kind: Option<String>,
}

/// Appends `event` by `actor` at `at`.
pub async fn insert(
    raw: Raw<'_>,
    at: i64,
    actor: &Actor,
    event: &AuditEvent,
) -> Result<(), DbError> {
    let detail = event.detail().to_string();
    let nar_hash = event.nar_hash().map(|h| h.to_string());
    on_conn!(raw, c => {
        sqlx::query(
            "INSERT INTO audit_log (at, kind, cache, subject, jti, client_addr, store_path, nar_hash, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(at)
        .bind(event.kind())
        .bind(event.cache().map(|c| c.as_str()))
        .bind(actor.subject.as_deref())
        .bind(actor.jti.as_deref())
        .bind(actor.client_addr.as_deref())
        .bind(event.store_path())
        .bind(nar_hash.as_deref())
        .bind(&detail)
        .execute(&mut *c)
        .await?;
        Ok(())
    })
}

/// Up to `limit` events matching `filter` with ids above `after`, oldest
/// first: page on by passing the last id back.
pub async fn list(
    raw: Raw<'_>,
    filter: &AuditFilter,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditRecord>, DbError> {
    // Conditions are fixed text; only the values are bound, in this order.
    let mut conds = vec!["id > $1".to_owned()];
    let mut text: Vec<&str> = Vec::new();
    let mut n = 2;
    if filter.since.is_some() {
        conds.push(format!("at >= ${n}"));
        n += 1;
    }
    for (column, value) in [
        ("subject", &filter.subject),
        ("jti", &filter.jti),
        ("cache", &filter.cache),
        ("kind", &filter.kind),
    ] {
        if let Some(v) = value {
            conds.push(format!("{column} = ${n}"));
            text.push(v);
            n += 1;
        }
    }
    let sql = format!(
        "SELECT id, at, kind, cache, subject, jti, client_addr, store_path, nar_hash, detail
         FROM audit_log WHERE {} ORDER BY id LIMIT ${n}",
        conds.join(" AND ")
    );
    on_conn!(raw, c => {
        let mut q = sqlx::query(AssertSqlSafe(&*sql)).bind(after);
        if let Some(since) = filter.since {
            q = q.bind(since);
        }
        for v in &text {
            q = q.bind(*v);
        }
        let rows = q.bind(limit).fetch_all(&mut *c).await?;
        rows.iter()
            .map(|r| -> Result<AuditRecord, DbError> {
                let detail: String = r.try_get("detail")?;
                Ok(AuditRecord {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    kind: r.try_get("kind")?,
                    cache: r.try_get("cache")?,
                    subject: r.try_get("subject")?,
                    jti: r.try_get("jti")?,
                    client_addr: r.try_get("client_addr")?,
                    store_path: r.try_get("store_path")?,
                    nar_hash: r.try_get("nar_hash")?,
                    detail: serde_json::from_str(&detail)
                        .map_err(|e| super::corrupt("audit_log.detail", e))?,
                })
            })
            .collect()
    })
}

/// Deletes events older than `before` (the operator's
/// `larder-admin audit --prune-before`); returns how many went.
pub async fn prune_before(raw: Raw<'_>, before: i64) -> Result<u64, DbError> {
    on_conn!(raw, c => {
        let done = sqlx::query("DELETE FROM audit_log WHERE at < $1")
            .bind(before)
            .execute(&mut *c)
            .await?;
        Ok(done.rows_affected())
    })
}
