//! Group commit: one transaction for the runs that shared a pack.
//!
//! The runs of a shared pack ([`larder_shared::chunk_store::packer`]) all
//! wake when it is sealed. Committed one by one, each paid a transaction of
//! about a dozen statements, and they queued on the pack row's lock
//! (docs/measurements.md, "Waiting small ingests"). Here such a run hands
//! its commit to the process's queue (`group_queue`): one task at a time takes
//! every run waiting and commits them in one transaction whose statements
//! are batched across runs (the NAR rows locked together, one insert of all
//! new chunks, the references of reused chunks added in ascending id order,
//! each pack row updated once). Runs arriving meanwhile form the next group.
//!
//! A group that fails for any reason (a run whose intents GC reclaimed, a
//! chunk GC is deleting, a NAR an overlapping run made ready first) rolls
//! back whole, and each of its runs then commits alone ([`commit`]), so a
//! bad run fails alone, with the error it would have had. Crash safety is
//! the single commit's: nothing is visible before the transaction commits,
//! and every run's write intents stay until it does (docs/gc.md).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::panic::AssertUnwindSafe;

use anyhow::{Context, bail};
use futures::FutureExt;
use tokio::sync::oneshot;

use larder_shared::chunk::ChunkHash;
use larder_shared::chunk_store::pack_writer::SealedPack;
use larder_shared::db::chunks::{self, BATCH, NewChunk};
use larder_shared::db::nar_layout::NarLayoutBuilder;
use larder_shared::db::{ChunkId, NarId, staging_intents, unix_now};
use larder_shared::db::{chunk_claims, layout_epoch, nars, packs, refcounts};

use super::commit::{commit, dedup, recorded_first};
use super::group_queue::{Pending, Reply};
use super::run_commit::{RunCommit, Slot};
use crate::services::Services;

/// Commits `run` with whatever other runs are waiting (or alone, if its
/// group fails); as [`commit`], false when another run finished first.
pub(super) async fn commit_grouped(svc: &Services, run: RunCommit) -> anyhow::Result<bool> {
    let (reply, answer) = oneshot::channel();
    if svc.group_commit.push(run, reply) {
        tokio::spawn(drain(svc.clone()));
    }
    match answer.await {
        Ok(Reply::Done) => Ok(true),
        Ok(Reply::Alone(run)) => commit(svc, &run).await,
        Err(_) => bail!("the group commit stopped before this run's turn; retrying"),
    }
}

/// Commits groups until none is waiting: one transaction at a time, so the
/// runs arriving while one commits gather for the next.
async fn drain(svc: Services) {
    // The runs woken by the same seal are runnable now: let them queue up.
    tokio::task::yield_now().await;
    let queue = &svc.group_commit;
    while let Some(taken) = queue.take() {
        // A second run of a NAR in the group commits alone (and loses).
        let mut nars_seen = HashSet::new();
        let (group, others): (Vec<Pending>, Vec<Pending>) = taken
            .into_iter()
            .partition(|p| nars_seen.insert(p.run.nar_id));
        for p in others {
            let _ = p.reply.send(Reply::Alone(p.run));
        }
        let runs: Vec<&RunCommit> = group.iter().map(|p| &p.run).collect();
        let result = AssertUnwindSafe(commit_group(&svc, &runs))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the group commit panicked")));
        drop(runs);
        queue.record(group.len(), result.is_ok());
        if let Err(e) = &result {
            tracing::debug!(
                runs = group.len(),
                error = %format!("{e:#}"),
                "group commit failed; its runs commit alone"
            );
        }
        for p in group {
            let reply = match result {
                Ok(()) => Reply::Done,
                Err(_) => Reply::Alone(p.run),
            };
            let _ = p.reply.send(reply);
        }
    }
}

/// [`commit`] for several runs of distinct NARs in one transaction, locking
/// in the same order (NAR rows, new chunk rows by hash, reused chunk rows
/// ascending, pack rows ascending). Fails whole if any run would fail or
/// lose to another run of its NAR.
async fn commit_group(svc: &Services, runs: &[&RunCommit]) -> anyhow::Result<()> {
    let mut tx = svc.db.begin().await?;
    let nar_ids: Vec<NarId> = runs
        .iter()
        .map(|r| r.nar_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    nars::lock_many(tx.raw(), &nar_ids).await?;
    let owners: Vec<&str> = runs.iter().map(|r| &*r.owner).collect();
    let released = chunk_claims::release_intents_of(tx.raw(), &owners).await?;
    if let Some(r) = runs
        .iter()
        .find(|r| released.get(&*r.owner).copied().unwrap_or(0) != r.intents)
    {
        bail!("GC reclaimed a write intent of {} as stale", r.owner);
    }
    let epoch = layout_epoch::current(tx.raw()).await?;

    // Each new hash is inserted once, holding the reference of the first
    // run naming it.
    let mut inserter: HashMap<ChunkHash, usize> = HashMap::new();
    let mut new: Vec<NewChunk> = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        for n in r.new.values() {
            if let std::collections::hash_map::Entry::Vacant(e) = inserter.entry(n.hash) {
                e.insert(i);
                new.push(n.clone());
            }
        }
    }
    new.sort_by_key(|n| n.hash);
    let mut ids: HashMap<ChunkHash, ChunkId> = HashMap::new();
    let mut holder: HashMap<ChunkId, usize> = HashMap::new();
    let mut live: Vec<(i64, i64)> = Vec::new();
    for batch in new.chunks(BATCH) {
        let inserted = refcounts::insert_referenced(tx.raw(), batch).await?;
        let mut rest = Vec::new();
        for n in batch {
            match inserted.get(&n.hash) {
                Some(&id) => {
                    let run = inserter.get(&n.hash).copied();
                    holder.insert(id, run.context("an inserted chunk has no run")?);
                    if let Some((pack, _)) = n.pack {
                        live.push((pack, i64::from(n.file_size)));
                    }
                }
                None => rest.push(n.hash),
            }
        }
        ids.extend(inserted);
        ids.extend(recorded_first(tx.raw(), rest).await?);
    }

    // One reference per distinct chunk of each run, but the one its own
    // insert holds; summed per chunk, locked ascending, added by count.
    let mut lists: Vec<Vec<ChunkId>> = Vec::with_capacity(runs.len());
    let mut refs: BTreeMap<ChunkId, i64> = BTreeMap::new();
    for (i, r) in runs.iter().enumerate() {
        let list: Vec<ChunkId> = r
            .slots
            .iter()
            .map(|s| match s {
                Slot::Known(id) => Ok(*id),
                Slot::New(h) => ids.get(h).copied().context("new chunk has no id"),
            })
            .collect::<anyhow::Result<_>>()?;
        for id in dedup(&list) {
            if holder.get(&id) != Some(&i) {
                *refs.entry(id).or_default() += 1;
            }
        }
        lists.push(list);
    }
    let all: Vec<ChunkId> = refs.keys().copied().collect();
    for batch in all.chunks(BATCH) {
        refcounts::lock_in_order(tx.raw(), batch).await?;
    }
    let mut by_times: BTreeMap<i64, Vec<ChunkId>> = BTreeMap::new();
    for (id, times) in refs {
        by_times.entry(times).or_default().push(id);
    }
    for (times, ids) in by_times {
        for batch in ids.chunks(BATCH) {
            if refcounts::add_refs_times(tx.raw(), times, batch).await? != batch.len() as u64 {
                bail!("a reused chunk is being garbage-collected");
            }
        }
    }

    // Every pack of every run gets its row once, its live counts summed.
    let mut sealed: BTreeMap<i64, &SealedPack> = BTreeMap::new();
    for r in runs {
        sealed.extend(r.sealed.iter().map(|(id, s)| (*id, s)));
    }
    let deltas = packs::by_pack(live);
    if let Some(pack) = deltas.keys().find(|p| !sealed.contains_key(p)) {
        bail!("a new chunk names pack {pack}, which no run of the group sealed");
    }
    let level = svc.config.compression.level;
    for (id, s) in &sealed {
        let delta = deltas.get(id).copied().unwrap_or_default();
        packs::add_live(tx.raw(), (s.id, s.size, s.chunks), level, delta, unix_now()).await?;
    }

    // The layouts the read path seeks by, from the rows as committed.
    let distinct: Vec<ChunkId> = lists
        .iter()
        .flatten()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut recs = HashMap::new();
    for batch in distinct.chunks(BATCH) {
        recs.extend(chunks::get_many(tx.raw(), batch).await?);
    }
    let now = unix_now();
    for (r, list) in runs.iter().zip(&lists) {
        let (mut file_size, mut layout) = (0i64, NarLayoutBuilder::default());
        for id in list {
            let rec = recs.get(id).context("chunk vanished")?;
            file_size += i64::from(rec.file_size);
            layout.push(rec)?;
        }
        let layout = layout.finish();
        if !nars::mark_ready(tx.raw(), r.nar_id, list, (&layout, epoch), file_size, now).await? {
            bail!("NAR {} was made ready by another run", r.nar_id);
        }
        staging_intents::release(tx.raw(), &r.staged, now).await?;
    }
    tx.commit().await?;
    Ok(())
}
