//! The host's Nix store is shared by the tests running at once. Builds in
//! it hold [`SHARED_STORE_BUILDS`] shared, except inside
//! [`with_store_to_itself`], which holds it exclusively: `larder
//! watch-store` pushes every path the store registers, so its test must not
//! see (and push) the other tests' builds.

use tokio::sync::{RwLock, RwLockReadGuard};

static SHARED_STORE_BUILDS: RwLock<()> = RwLock::const_new(());

tokio::task_local! {
    static STORE_TO_ITSELF: ();
}

/// Runs `body` while no other test builds in the shared store; builds made
/// by `body` itself (on this task) go ahead.
pub async fn with_store_to_itself<T>(body: impl std::future::Future<Output = T>) -> T {
    let _exclusive = SHARED_STORE_BUILDS.write().await;
    STORE_TO_ITSELF.scope((), body).await
}

/// What a build holds while it runs: the shared lock, or nothing inside
/// [`with_store_to_itself`].
pub(crate) async fn build_guard() -> Option<RwLockReadGuard<'static, ()>> {
    match STORE_TO_ITSELF.try_with(|()| ()) {
        Ok(()) => None,
        Err(_) => Some(SHARED_STORE_BUILDS.read().await),
    }
}
