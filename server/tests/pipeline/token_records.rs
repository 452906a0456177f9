//! The sweeper drops the records of tokens long expired (every OIDC
//! exchange records one), with their revocations; recent ones stay listed.

use larder_shared::db::{tokens, unix_now};
use larder_shared::token::Revocation;
use larder_worker::sweeper::{self, TOKEN_RECORDS_KEPT};

use crate::common::TestApp;

fn record(jti: &str, expires_at: i64) -> tokens::TokenRecord {
    tokens::TokenRecord {
        jti: jti.to_owned(),
        subject: format!("oidc:ci:{jti}"),
        permissions: "{}".to_owned(),
        issued_at: expires_at - 3600,
        expires_at,
        last_used_at: None,
    }
}

pub(super) async fn expired_token_records_are_pruned(app: &TestApp) {
    let now = unix_now();
    let kept = TOKEN_RECORDS_KEPT.as_secs() as i64;
    {
        let mut conn = app.state.db.conn().await.expect("conn");
        for (jti, exp) in [
            ("long-expired", now - kept - 60),
            ("long-expired-revoked", now - kept - 60),
            ("recently-expired", now - 60),
            ("valid", now + 3600),
        ] {
            tokens::record(conn.raw(), &record(jti, exp))
                .await
                .expect("record");
        }
        let revoked = Revocation::Token {
            jti: "long-expired-revoked".to_owned(),
        };
        tokens::revoke(conn.raw(), &revoked, now - kept)
            .await
            .expect("revoke");
    }
    let report = sweeper::sweep(&app.services, now).await.expect("sweep");
    assert_eq!(report.token_records_pruned, 2);
    let mut conn = app.state.db.conn().await.expect("conn");
    let left: Vec<String> = tokens::list(conn.raw())
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.jti)
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|j| j == "recently-expired" || j == "valid"));
    assert!(
        tokens::revocations(conn.raw())
            .await
            .expect("revocations")
            .is_empty(),
        "the expired token's revocation went first"
    );
}
