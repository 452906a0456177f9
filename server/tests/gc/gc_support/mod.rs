//! Helpers of `tests/gc.rs` (docs/gc.md): apps with a GC-friendly
//! configuration, a test clock that backdates rows instead of waiting,
//! the HTTP calls GC scenarios make, block-pool NARs that share chunks,
//! and the invariants of the chunk store.
//!
//! Built on `tests/common` (used as is): [`TestApp`] over SQLite or
//! PostgreSQL, driven through the router with `oneshot`.

pub mod claims;
pub mod clock;
pub mod closure;
pub mod http;
pub mod invariants;
pub mod pool;
pub mod race;

use sqlx::AssertSqlSafe;

use larder_shared::db::Db;

use crate::common::{Backend, TestApp};

/// A fresh app with the default configuration (30-day retention, 1-hour grace).
pub async fn default_app(backend: Backend) -> TestApp {
    TestApp::new(backend).await
}

/// A fresh app storing each chunk as its own object (`[storage] pack-size
/// = 0`, the layout before packs): the deletion protocol's per-chunk
/// interleavings, and stores written before packs.
pub async fn legacy_app(backend: Backend) -> TestApp {
    TestApp::builder(backend).pack_size(0).build().await
}

/// A fresh app whose GC, ingest and verify run with `[garbage-collection]
/// grace-period = "1s"`, so chunks zeroed a moment ago are already fair
/// game for a concurrent GC (the race of docs/gc.md "Races with pushes").
pub async fn short_grace_app(backend: Backend) -> TestApp {
    short_grace(TestApp::builder(backend)).await
}

/// [`short_grace_app`] with each chunk its own object, so the race also
/// puts back a dead ingest's leftover objects.
pub async fn short_grace_legacy_app(backend: Backend) -> TestApp {
    short_grace(TestApp::builder(backend).pack_size(0)).await
}

async fn short_grace(builder: crate::common::TestAppBuilder) -> TestApp {
    let app = builder
        .config("[garbage-collection]\ngrace-period = \"1s\"\n")
        .build()
        .await;
    assert_eq!(
        app.services
            .config
            .garbage_collection
            .grace_period
            .as_secs(),
        1
    );
    app
}

/// Runs a statement; returns the rows it changed.
pub async fn exec(app: &TestApp, sql: &str) -> u64 {
    let q = AssertSqlSafe(sql.to_owned());
    match &app.state.db {
        Db::Postgres(p) => sqlx::query(q).execute(p).await.map(|r| r.rows_affected()),
        Db::Sqlite(p) => sqlx::query(q).execute(p).await.map(|r| r.rows_affected()),
    }
    .unwrap_or_else(|e| panic!("statement failed: {e}\n{sql}"))
}

/// Rows of two integer columns.
pub async fn pairs(db: &Db, sql: &str) -> Vec<(i64, i64)> {
    let q = AssertSqlSafe(sql.to_owned());
    match db {
        Db::Postgres(p) => sqlx::query_as::<_, (i64, i64)>(q).fetch_all(p).await,
        Db::Sqlite(p) => sqlx::query_as::<_, (i64, i64)>(q).fetch_all(p).await,
    }
    .unwrap_or_else(|e| panic!("query failed: {e}\n{sql}"))
}

/// Rows of one integer column.
pub async fn ints(db: &Db, sql: &str) -> Vec<i64> {
    let q = AssertSqlSafe(sql.to_owned());
    match db {
        Db::Postgres(p) => sqlx::query_scalar::<_, i64>(q).fetch_all(p).await,
        Db::Sqlite(p) => sqlx::query_scalar::<_, i64>(q).fetch_all(p).await,
    }
    .unwrap_or_else(|e| panic!("query failed: {e}\n{sql}"))
}
