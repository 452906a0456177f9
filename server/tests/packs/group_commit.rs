//! Section 12: group commit of the runs of a shared pack (worker
//! `jobs::ingest::group_commit`). Runs whose new chunks overlap, and which
//! reuse the same stored chunks, commit together with every reference
//! counted once per NAR; a run whose commit fails (its write intents
//! reclaimed) fails alone and its rerun ingests it.

use super::*;

on_both_backends!(
    a_group_counts_shared_chunks_once,
    a_failing_run_of_a_group_fails_alone,
);

/// A worker process with 1 MiB packs and 1–4 KiB chunks, so NARs of a few
/// blocks share many chunks and all of them join the shared pack.
fn small_chunks(app: &TestApp) -> Services {
    with_config(app, |c| {
        c.storage.pack_size = MIB as u64;
        c.chunking.nar_size_threshold = 4096;
        c.chunking.min_size = 1024;
        c.chunking.avg_size = 2048;
        c.chunking.max_size = 4096;
    })
}

async fn a_group_counts_shared_chunks_once(app: &TestApp) {
    app.create_cache("gc12", false).await;
    let token = app.token(&[("gc12", PULL_PUSH_DELETE)]);
    let svc = small_chunks(app);
    let pool = BlockPool::new(0x12, 4, 24 * KIB);
    // Block 0 is stored before; the group reuses it in every run.
    let base = pool.nar("base", 1300, &[0]);
    assert_kind(&app.upload(&token, "gc12", &base).await, "Uploaded");
    assert_eq!(ingest_concurrently(&svc, app).await, 1);
    // Block 1 is new in every run (and twice in each NAR); blocks 2 and 3
    // are new in half the runs each.
    let nars: Vec<TestNar> = (0..6)
        .map(|i| pool.nar(&format!("g{i}"), 1310 + i as u64, &[0, 1, 1, 2 + i % 2]))
        .collect();
    for n in &nars {
        assert_kind(&app.upload(&token, "gc12", n).await, "Uploaded");
    }
    assert_eq!(ingest_concurrently(&svc, app).await, nars.len());
    let counts = svc.group_commits();
    assert!(
        counts.grouped_runs >= 2,
        "runs woken by one seal commit together: {counts:?}"
    );
    assert_eq!(counts.failed_groups, 0, "{counts:?}");
    assert!(app.staged_nar_ids().await.is_empty());
    app.assert_chunk_store_consistent().await;
    assert_chunk_store_sound(app, "a group sharing chunks").await;
    for n in nars.iter().chain([&base]) {
        assert_bytes(app, &token, "gc12", n, "grouped").await;
    }
    // The chunks the group shared are referenced once per NAR naming them.
    let max = app.scalar("SELECT MAX(refcount) FROM chunks").await;
    assert_eq!(max, 1 + nars.len() as i64, "block 0: base and every run");
}

async fn a_failing_run_of_a_group_fails_alone(app: &TestApp) {
    app.create_cache("gf12", false).await;
    let token = app.token(&[("gf12", PULL_PUSH_DELETE)]);
    let svc = small_chunks(app);
    let nars: Vec<TestNar> = (0..3)
        .map(|i| TestNar::files(&format!("gf-{i}"), 1400 + i, &[6 * KIB, 30 * KIB]))
        .collect();
    for n in &nars {
        assert_kind(&app.upload(&token, "gf12", n).await, "Uploaded");
    }
    // Every run held before its commit, its frames in the shared pack.
    let ids = app.staged_nar_ids().await;
    let pauses: Vec<BeforeCommit> = ids.iter().map(|_| BeforeCommit::default()).collect();
    let runs: Vec<_> = ids
        .iter()
        .zip(&pauses)
        .map(|(&id, pause)| {
            let (svc, pause) = (svc.clone(), pause.clone());
            tokio::spawn(async move { (id, ingest::ingest_pausing(&svc, id, &pause).await) })
        })
        .collect();
    for p in &pauses {
        p.reached().await;
    }
    // GC took one run's intents for a dead writer's: that run must fail.
    app.execute("DELETE FROM chunk_intents WHERE owner = (SELECT MIN(owner) FROM chunk_intents)")
        .await;
    for p in &pauses {
        p.resume();
    }
    let (mut ok, mut failed) = (0, Vec::new());
    for run in futures::future::join_all(runs).await {
        match run.expect("task") {
            (_, Ok(Outcome::Ingested { .. })) => ok += 1,
            (id, Ok(Outcome::Skipped)) => panic!("run of {id:?} skipped"),
            (id, Err(e)) => {
                assert!(format!("{e:#}").contains("reclaimed"), "{e:#}");
                failed.push(id);
            }
        }
    }
    assert_eq!(
        (ok, failed.len()),
        (nars.len() - 1, 1),
        "only one run fails"
    );
    // Its group (or itself alone) failed first, then each run committed alone.
    assert!(svc.group_commits().failed_groups >= 1);
    assert_eq!(app.staged_nar_ids().await, failed);
    // Its rerun ingests it; nothing drifted meanwhile.
    assert_eq!(ingest_concurrently(&svc, app).await, 1);
    for n in &nars {
        assert_bytes(app, &token, "gf12", n, "after a failed group").await;
    }
    app.assert_chunk_store_consistent().await;
    assert_chunk_store_sound(app, "after a failed group").await;
}
