//! The server's integration tests, as one binary: each scenario drives the
//! real router, the worker's jobs and `larder-admin` over SQLite and
//! PostgreSQL (some also over S3). One binary links the whole graph once.
//!
//! - `pipeline`: upload → staged serving → ingest → chunked serving, ranges,
//!   caching headers, the audit trail, first push wins, import from Attic;
//! - `nix_upload`: what stock `nix copy --to http://…` sends;
//! - `gc`: retention, closures, pins, chunk deletion and its races;
//! - `packs`: chunks packed many per object: group commit, runs, GC of
//!   packs, a killed writer's pack, the pack index, verify;
//! - `recompression`: cold packs rewritten at the archive level;
//! - `security`: credentials, permissions, hostile input, slow clients,
//!   signing keys at rest.

/// Runs each scenario on a fresh app per backend, as `<scenario>::sqlite`
/// and `<scenario>::postgres`: `on_both_backends!(a, b)` with
/// [`common::TestApp::new`], `on_both_backends!(make => a, b)` with another
/// constructor taking the backend (one returning `Option<TestApp>` skips
/// the scenario on `None`, as `TestApp::on_s3` does without an S3 server).
/// The app is torn down even when the
/// scenario panics (no side effects in `Drop`). Defined before the suites so
/// every one of them sees it.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        on_both_backends!(crate::common::TestApp::new => $($scenario),*);
    };
    ($make:path => $($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            async fn run(backend: crate::common::Backend) {
                // A constructor may return `Option<TestApp>`: `None` skips.
                let app: Option<crate::common::TestApp> = $make(backend).await.into();
                if let Some(app) = app {
                    app.run(super::$scenario).await
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(crate::common::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run(crate::common::Backend::Postgres).await
            }
        }
    )*};
}

#[allow(dead_code)] // fixtures for the suites that import from Attic
mod attic_support;
#[allow(dead_code)] // serves every suite; no one suite uses all of it
mod common;

mod gc;
mod nix_upload;
mod packs;
mod pipeline;
mod recompression;
mod security;
