//! `larder-admin import-attic` as its own process, killed with SIGKILL in
//! the middle of a pass (docs/operations.md "Moving from Attic": a pass may
//! be killed at any point and run again): the next pass finishes without
//! duplicates, every path and NAR exists once, the killed pass's staging
//! copy is the sweeper's and nothing else leaks, a pass after completion
//! changes nothing, and Attic's database and storage are never written.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use larder_core::nix::signing::SigningKey;
use larder_shared::db::unix_now;
use larder_worker::sweeper;

use super::{KIB, MIB};
use crate::attic_support::{AtticFixture, Codec};
use crate::common::nar::TestNar;
use crate::common::read::fetch;
use crate::common::{self, TestApp};

/// NARs in Attic; every third is in both caches.
const NARS: usize = 24;
/// Bound on each pass.
const LIMIT: Duration = Duration::from_secs(120);

/// `larder-admin -f CONFIG import-attic --from ATTIC` as a child process.
fn import_command(app: &TestApp, attic: &Path) -> Command {
    let mut cmd = Command::new(common::package_binary("larder-admin"));
    cmd.arg("-f")
        .arg(&app.config_path)
        .arg("import-attic")
        .arg("--from")
        .arg(attic);
    for var in ["LARDER_CONFIG", "LARDER_DATABASE_URL", "LARDER_DATA_DIR"] {
        cmd.env_remove(var);
    }
    // The test config is written without the KEK (the app gets it in memory).
    cmd.env("LARDER_SIGNING_KEK", common::TEST_KEK);
    cmd
}

/// A whole pass; panics with its output unless it exits 0.
fn import_pass(app: &TestApp, attic: &Path) -> String {
    let out: Output = import_command(app, attic)
        .output()
        .expect("running larder-admin");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "import-attic failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The number after `label` in the pass's summary (`paths staged:   3 (…)`).
fn summary_count(out: &str, label: &str) -> usize {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in the summary:\n{out}"))
}

pub(super) async fn import_attic_survives_kill_9(app: &TestApp) {
    let attic = AtticFixture::new(app.backend).await;
    let key_a = SigningKey::generate("kill-a-1").unwrap();
    let key_b = SigningKey::generate("kill-b-1").unwrap();
    attic
        .cache(1, "kill-a", &key_a.export_secret(), true, 40, &[], None)
        .await;
    attic
        .cache(2, "kill-b", &key_b.export_secret(), false, 41, &[], None)
        .await;
    let now = unix_now();
    let nars: Vec<TestNar> = (0..NARS)
        .map(|i| TestNar::files(&format!("killed-{i}"), 500 + i as u64, &[MIB, 300 * KIB]))
        .collect();
    let mut objects = 0;
    for (i, nar) in nars.iter().enumerate() {
        let (id, half) = (i as i64 + 1, nar.bytes.len() / 2);
        attic
            .chunk(2 * id - 1, &nar.bytes[..half], Codec::Zstd)
            .await;
        attic.chunk(2 * id, &nar.bytes[half..], Codec::None).await;
        attic.nar(id, nar, &[Some(2 * id - 1), Some(2 * id)]).await;
        attic.object(1, id, nar, now - 86400, now - 60).await;
        objects += 1;
        if i % 3 == 0 {
            attic.object(2, id, nar, now - 86400, now - 60).await;
            objects += 1;
        }
    }
    let before = attic.fingerprint().await;

    // The first pass, killed with SIGKILL once it has recorded a path.
    let mut child = import_command(app, &attic.config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning larder-admin");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("import-attic finished ({status}) before it could be killed");
        }
        if app.count("objects").await >= 1 {
            break;
        }
        assert!(started.elapsed() < LIMIT, "no path recorded in {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
    child.wait().expect("wait");
    let killed_at = app.count("objects").await as usize;
    assert!(killed_at < objects, "killed after the last path");

    // Run again: it finishes, taking the killed pass's paths as present.
    let out = import_pass(app, &attic.config_path);
    assert_eq!(summary_count(&out, "paths present:"), killed_at, "{out}");
    assert_eq!(summary_count(&out, "failures:"), 0, "{out}");
    app.drain_jobs().await;

    // Exactly one copy of everything.
    assert_eq!(app.count("objects").await as usize, objects);
    assert_eq!(app.count("nars").await as usize, NARS);
    let dup_nars = app
        .scalar("SELECT COUNT(*) FROM (SELECT nar_hash FROM nars GROUP BY nar_hash HAVING COUNT(*) > 1) d")
        .await;
    assert_eq!(dup_nars, 0, "a NAR recorded twice");
    app.assert_chunk_store_consistent().await;
    // What the killed pass left in staging is the worker's to remove once
    // older than `[staging] max-age`: its staging intent and object (the
    // sweeper), and the temp file of a write it cut short (the hourly
    // `remove_incomplete`, here with the age already passed).
    let max_age = app.services.config.staging.max_age.as_secs() as i64;
    sweeper::sweep(&app.services, unix_now() + max_age + 60)
        .await
        .expect("sweep");
    let cut_short = app
        .state
        .staging
        .remove_incomplete(Duration::ZERO)
        .await
        .expect("remove_incomplete");
    assert!(cut_short <= 1, "{cut_short} interrupted writes");
    app.assert_staging_empty().await;
    let token = app.root_token();
    for (i, nar) in nars.iter().enumerate().step_by(5) {
        let body = fetch(
            app,
            &token,
            "kill-a",
            &format!("nar/{}.nar", nar.store_hash()),
        )
        .await;
        assert!(body == nar.bytes, "NAR {i} served as imported");
    }

    // A pass after completion changes nothing.
    let tables = [
        "caches",
        "objects",
        "nars",
        "chunks",
        "packs",
        "staging_intents",
    ];
    let mut counts = Vec::new();
    for t in tables {
        counts.push(app.count(t).await);
    }
    let out = import_pass(app, &attic.config_path);
    for label in [
        "paths staged:",
        "paths linked:",
        "caches created:",
        "caches updated:",
    ] {
        assert_eq!(summary_count(&out, label), 0, "{label}\n{out}");
    }
    assert_eq!(summary_count(&out, "paths present:"), objects, "{out}");
    for (t, before) in tables.iter().zip(counts) {
        assert_eq!(app.count(t).await, before, "{t} after a second pass");
    }
    assert!(app.staged_nar_ids().await.is_empty());

    // Attic's database and storage are exactly as before.
    assert_eq!(attic.fingerprint().await, before);
    attic.teardown().await;
}
