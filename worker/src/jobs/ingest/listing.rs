//! The `.ls` listing an ingest made in its pass over the NAR, recorded once
//! the NAR is ready.

use larder_shared::db::{NarId, listings, unix_now};

use crate::services::Services;

/// Records the `.ls` listing the ingest made, after its commit and outside
/// it: a listing can be hundreds of KiB, and inside the transaction it held
/// up the process's one group committer (and every run queued behind it).
/// A listing not recorded (a crash here, a failed insert) is made again
/// from the stored NAR by the first `.ls` request.
pub(super) async fn record_listing(svc: &Services, nar_id: NarId, listing: &[u8]) {
    let recorded = match svc.db.conn().await {
        Ok(mut conn) => listings::insert_nar_listing(conn.raw(), nar_id, listing, unix_now())
            .await
            .map(drop),
        Err(e) => Err(e),
    };
    if let Err(e) = recorded {
        tracing::warn!(nar_id = nar_id.get(), error = %e, "listing not recorded; made on request instead");
    }
}
