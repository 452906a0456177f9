//! GC phases that find objects no row names any more, in the database
//! (never by listing storage), and pass them to [`super::delete`]: packs
//! whose every chunk died, objects `larder-admin repack` retired, and keys
//! a dead deleter left claimed or a dead writer left intended.

use larder_shared::db::chunks::BATCH;
use larder_shared::db::{chunk_claims, packs};

use super::{Deleted, Doomed, delete};
use crate::gc_lease::GcLease;
use crate::services::Services;

/// Deletes packs no chunk row locates a frame in any more (every chunk in
/// them died), through [`delete`]: a pack a writer still holds an intent on
/// (a shared pack other ingests are committing into) or that a row names
/// again is kept.
pub async fn delete_empty_packs(
    svc: &Services,
    lease: &GcLease,
    stale_cutoff: i64,
) -> anyhow::Result<Deleted> {
    let mut total = Deleted::default();
    let mut after = 0i64;
    loop {
        let page = {
            let mut conn = svc.db.conn().await?;
            packs::empty(conn.raw(), after, stale_cutoff, BATCH as i64).await?
        };
        let Some(&(last, _)) = page.last() else { break };
        after = last;
        let doomed = page
            .into_iter()
            .map(|(id, size)| Doomed::pack(id, size))
            .collect();
        total += delete(svc, lease, doomed, stale_cutoff).await?;
        lease.renew(svc).await?;
    }
    Ok(total)
}

/// Deletes objects retired before `cutoff` (`larder-admin repack` moved
/// their chunks into packs) through [`delete`].
pub async fn delete_retired_objects(
    svc: &Services,
    lease: &GcLease,
    cutoff: i64,
) -> anyhow::Result<Deleted> {
    let mut total = Deleted::default();
    let mut after = String::new();
    loop {
        let page = {
            let mut conn = svc.db.conn().await?;
            chunk_claims::retired_before(conn.raw(), cutoff, &after, BATCH as i64).await?
        };
        let Some(last) = page.last() else { break };
        after = last.clone();
        let doomed: Vec<Doomed> = page.iter().filter_map(|k| Doomed::orphan(k)).collect();
        total += delete(svc, lease, doomed, cutoff).await?;
        lease.renew(svc).await?;
    }
    Ok(total)
}

/// Deletes objects no row names, found in the database, never by listing
/// storage: first keys a dead deleter left claimed, then keys whose
/// intents were not refreshed since `cutoff` (their writer died before its
/// commit).
pub async fn delete_orphan_objects(
    svc: &Services,
    lease: &GcLease,
    cutoff: i64,
) -> anyhow::Result<Deleted> {
    let mut total = Deleted::default();
    for stale_intents in [false, true] {
        let mut after = String::new();
        loop {
            let page = {
                let mut conn = svc.db.conn().await?;
                if stale_intents {
                    chunk_claims::stale_intent_keys(conn.raw(), &after, cutoff, BATCH as i64)
                        .await?
                } else {
                    chunk_claims::claims_page(conn.raw(), &after, BATCH as i64).await?
                }
            };
            let Some(last) = page.last() else { break };
            after = last.clone();
            let doomed: Vec<Doomed> = page
                .iter()
                .filter_map(|k| {
                    let d = Doomed::orphan(k);
                    if d.is_none() {
                        tracing::warn!(
                            key = k,
                            "claim or intent on a key that is no chunk's or pack's"
                        );
                    }
                    d
                })
                .collect();
            total += delete(svc, lease, doomed, cutoff).await?;
            lease.renew(svc).await?;
        }
    }
    Ok(total)
}
