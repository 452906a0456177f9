//! `revoke-token` and `list-tokens`.

use clap::Args;

use larder_shared::audit::{Actor, AuditEvent};
use larder_shared::config::Config;
use larder_shared::db::{audit, tokens, unix_now};
use larder_shared::token::{Revocation, Revocations};

/// `revoke-token --jti ID | --sub SUBJECT`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RevokeToken {
    /// The token id (`jti`, shown by list-tokens).
    #[arg(long)]
    jti: Option<String>,
    /// Every token of this subject issued until now, including Attic-made
    /// tokens without `iat` (their `nbf` counts as issue time).
    #[arg(long)]
    sub: Option<String>,
}

impl RevokeToken {
    /// Records the revocation; every API replica honours it within
    /// `[jwt] revocation-refresh`.
    pub async fn run(self, config: &Config) -> anyhow::Result<()> {
        let now = unix_now();
        let revocation = match (self.jti, self.sub) {
            (Some(jti), _) => Revocation::Token { jti },
            (None, Some(sub)) => Revocation::subject_now(sub, now as u64),
            (None, None) => anyhow::bail!("pass --jti or --sub"),
        };
        let db = crate::open_db(config).await?;
        let mut tx = db.begin().await?;
        tokens::revoke(tx.raw(), &revocation, now).await?;
        let event = match &revocation {
            Revocation::Token { jti } => AuditEvent::TokenRevoke {
                token_jti: Some(jti.clone()),
                token_subject: None,
                issued_before: None,
            },
            Revocation::Subject {
                subject,
                issued_before,
            } => AuditEvent::TokenRevoke {
                token_jti: None,
                token_subject: Some(subject.clone()),
                issued_before: Some(*issued_before as i64),
            },
        };
        audit::insert(tx.raw(), now, &Actor::operator(), &event).await?;
        tx.commit().await?;
        let refresh = config.jwt.revocation_refresh;
        match &revocation {
            Revocation::Token { jti } => {
                println!("revoked token {jti}; in force on every server within {refresh:?}")
            }
            Revocation::Subject { subject, .. } => println!(
                "revoked every token of {subject:?} issued until now; in force on every server within {refresh:?}"
            ),
        }
        Ok(())
    }
}

/// Prints recorded tokens: jti, subject, issued, expires, status, permissions.
pub async fn list(config: &Config) -> anyhow::Result<()> {
    let db = crate::open_db(config).await?;
    let mut conn = db.conn().await?;
    let records = tokens::list(conn.raw()).await?;
    let revocations = Revocations::new(tokens::revocations(conn.raw()).await?);
    let now = unix_now();
    println!(
        "{:<26}  {:<20}  {:<20}  {:<20}  {:<20}  {:<8}  PERMISSIONS",
        "JTI", "SUBJECT", "ISSUED", "EXPIRES", "LAST USED", "STATUS"
    );
    for t in records {
        let status = if revocations.is_revoked_parts(Some(&t.jti), &t.subject, t.issued_at as u64) {
            "revoked"
        } else if t.expires_at < now {
            "expired"
        } else {
            "valid"
        };
        println!(
            "{:<26}  {:<20}  {:<20}  {:<20}  {:<20}  {:<8}  {}",
            t.jti,
            t.subject,
            fmt_time(t.issued_at),
            fmt_time(t.expires_at),
            t.last_used_at.map_or_else(|| "never".to_owned(), fmt_time),
            status,
            t.permissions
        );
    }
    Ok(())
}

/// RFC 3339 in UTC, seconds precision.
pub fn fmt_time(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}
