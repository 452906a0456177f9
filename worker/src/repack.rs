//! `larder-admin repack`: moves chunks stored one per object (the layout
//! before packs, or `[storage] pack-size = 0`) into packs, online, through
//! [`crate::pack_mover`]. It holds the GC lease (so no GC or verify runs
//! meanwhile) and reads each chunk's object once; the objects it leaves
//! unnamed are retired and deleted by a GC a grace period later, so
//! downloads under way keep reading them.

use futures::{StreamExt, TryStreamExt};

use larder_shared::db::{ChunkId, chunks};

use crate::compaction;
use crate::gc_lease::GcLease;
use crate::pack_mover::{Moved, Mover};
use crate::services::Services;

/// Chunk rows read per page.
const PAGE: i64 = 500;
/// Chunk objects read at once.
const READS: usize = 8;

/// Repacks every referenced chunk stored on its own at `now`, and with
/// `archive` then recompresses every pack below `[compression]
/// archive-level` ([`compaction::archive_all`]); fails if a GC (or verify)
/// holds the lease, or packs are off.
pub async fn run(svc: &Services, now: i64, archive: bool) -> anyhow::Result<Moved> {
    anyhow::ensure!(
        svc.config.storage.pack_size > 0,
        "[storage] pack-size is 0: set a pack size to repack into"
    );
    let holder = format!("repack-{}", ulid::Ulid::new());
    let Some(lease) = GcLease::acquire(svc, now, &holder).await? else {
        anyhow::bail!("a garbage collection is running; run repack again when it has finished");
    };
    let mut result = repack(svc, &lease, now).await;
    if let (true, Ok(moved)) = (archive, &mut result) {
        match compaction::archive_all(svc, &lease, now).await {
            Ok(more) => *moved += more,
            Err(e) => result = Err(e),
        }
    }
    lease.release(svc, false).await?;
    result
}

async fn repack(svc: &Services, lease: &GcLease, now: i64) -> anyhow::Result<Moved> {
    let mut mover = Mover::new(svc, lease, "repack", now, None);
    // Chunks stored on their own were written at the ingest level.
    let level = svc.config.compression.level;
    let mut after = ChunkId(0);
    loop {
        let page = {
            let mut conn = svc.db.conn().await?;
            chunks::unpacked_page(conn.raw(), after, PAGE).await?
        };
        let Some(last) = page.last() else { break };
        after = last.id;
        let store = svc.chunks();
        let mut frames = futures::stream::iter(page)
            .map(|rec| {
                let store = store.clone();
                async move { store.read_frame(&rec).await.map(|f| (rec, f)) }
            })
            .buffered(READS);
        while let Some((rec, frame)) = frames.try_next().await? {
            mover.push(&rec, frame, level).await?;
        }
        lease.renew(svc).await?;
    }
    let done = mover.finish().await?;
    tracing::info!(?done, "repack finished");
    Ok(done)
}
