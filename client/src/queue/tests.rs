//! The queue file: concurrent writers, backoff, status.

use std::os::unix::fs::PermissionsExt as _;

use super::*;

fn target(server: &str, cache: &str) -> Target {
    Target {
        server: server.to_owned(),
        cache: cache.parse().unwrap(),
    }
}

fn path(i: usize) -> String {
    format!("/nix/store/{:0>32}-p{i}", i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_dedups_and_keeps_failures() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state").join("larder").join("queue.db");
    let queue = Queue::open(&file).await.unwrap();
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(file.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);

    let a = target("local", "demo");
    let b = target("local", "other");
    queue.enqueue(&a, &[path(1), path(2)], 100).await.unwrap();
    queue.enqueue(&b, &[path(1)], 100).await.unwrap();
    // The same path for the same target is one entry.
    queue.enqueue(&a, &[path(1)], 101).await.unwrap();
    let all = queue.all().await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].target, a);
    assert_eq!(all[0].path, path(1));
    assert_eq!(all[0].enqueued_at, 100);
    assert_eq!(all[0].next_attempt_at, 101);
    assert_eq!(all[2].target, b);

    // A failed entry queued again is due at once, keeping its history.
    queue.fail(&[all[1].id], "boom", 200).await.unwrap();
    queue.enqueue(&a, &[path(2)], 201).await.unwrap();
    let again = queue.all().await.unwrap();
    assert_eq!(again[1].attempts, 1);
    assert_eq!(again[1].last_error.as_deref(), Some("boom"));
    assert_eq!(again[1].next_attempt_at, 201);

    queue.remove(&[all[0].id, all[2].id]).await.unwrap();
    let left = queue.all().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].path, path(2));
    queue.close().await;

    // Reopening finds the same entries.
    let reopened = Queue::open(&file).await.unwrap();
    assert_eq!(reopened.all().await.unwrap(), left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_back_off_exponentially() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(&dir.path().join("queue.db")).await.unwrap();
    let t = target("s", "c");
    queue.enqueue(&t, &[path(1), path(2)], 1000).await.unwrap();
    let entries = queue.due(1000).await.unwrap();
    assert_eq!(entries.len(), 2);
    let id = entries[0].id;

    queue.fail(&[id], "connection refused", 1000).await.unwrap();
    let due: Vec<i64> = queue
        .due(1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        due,
        vec![entries[1].id],
        "a failed entry is not due at once"
    );
    assert_eq!(queue.due(1005).await.unwrap().len(), 2, "due after 5 s");

    queue.fail(&[id], "503", 1005).await.unwrap();
    let e = queue.all().await.unwrap().remove(0);
    assert_eq!(e.attempts, 2);
    assert_eq!(e.last_error.as_deref(), Some("503"));
    assert_eq!(e.next_attempt_at, 1015, "10 s after the second failure");

    for _ in 0..20 {
        queue.fail(&[id], "down", 2000).await.unwrap();
    }
    let e = queue.all().await.unwrap().remove(0);
    assert_eq!(e.attempts, 22);
    assert_eq!(e.next_attempt_at, 2000 + 600, "capped at ten minutes");
    // Failing an entry that is gone (pushed by another drainer) is a no-op.
    queue.remove(&[id]).await.unwrap();
    queue.fail(&[id], "late", 3000).await.unwrap();
    assert_eq!(queue.all().await.unwrap().len(), 1);
}

/// Parallel post-build hooks: each opens the file on its own (as separate
/// processes do) and appends at once; none fails, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("larder").join("queue.db");
    let t = target("local", "demo");
    let hooks: Vec<_> = (0..8)
        .map(|h| {
            let (file, t) = (file.clone(), t.clone());
            tokio::spawn(async move {
                let queue = Queue::open(&file).await?;
                for batch in 0..5 {
                    let paths: Vec<String> =
                        (0..4).map(|i| path(h * 100 + batch * 10 + i)).collect();
                    queue.enqueue(&t, &paths, 1).await?;
                }
                queue.close().await;
                Ok::<_, QueueError>(())
            })
        })
        .collect();
    for hook in hooks {
        hook.await.unwrap().unwrap();
    }
    let queue = Queue::open(&file).await.unwrap();
    let all = queue.all().await.unwrap();
    assert_eq!(all.len(), 8 * 5 * 4);
    let unique: std::collections::HashSet<&str> = all.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(unique.len(), all.len());
}

#[test]
fn status_lists_pending_and_failed() {
    let t = target("local", "demo");
    let entries = vec![
        Entry {
            id: 1,
            target: t.clone(),
            path: path(1),
            enqueued_at: 100,
            attempts: 0,
            last_error: None,
            next_attempt_at: 100,
        },
        Entry {
            id: 2,
            target: t,
            path: path(2),
            enqueued_at: 40,
            attempts: 3,
            last_error: Some("connection refused".to_owned()),
            next_attempt_at: 130,
        },
    ];
    let out = status::render(std::path::Path::new("/q.db"), &entries, 110);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "queue /q.db: 1 pending, 1 failed");
    assert_eq!(
        lines[1],
        format!("pending local:demo {} (queued 10s ago)", path(1))
    );
    assert_eq!(
        lines[2],
        format!(
            "failed  local:demo {} (queued 1m 10s ago, 3 attempts, next attempt in 20s): connection refused",
            path(2)
        )
    );
    assert_eq!(
        status::render(std::path::Path::new("/q.db"), &[], 0),
        "queue /q.db: 0 pending, 0 failed\n"
    );
}

/// `larder queue drop ARGV…` as the command line parses it.
fn parse_drop(argv: &[&str]) -> Result<args::DropArgs, clap::Error> {
    use clap::Parser as _;
    let cli =
        crate::cli::Cli::try_parse_from(["larder", "queue", "drop"].iter().chain(argv).copied())?;
    match cli.command {
        crate::cli::Command::Queue(args::QueueCommand::Drop(args)) => Ok(args),
        other => panic!("not queue drop: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_selects_failed_paths_or_all() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(&dir.path().join("queue.db")).await.unwrap();
    let (a, b) = (target("local", "demo"), target("local", "other"));
    queue
        .enqueue(&a, &[path(1), path(2), path(3)], 100)
        .await
        .unwrap();
    queue.enqueue(&b, &[path(1)], 100).await.unwrap();
    let ids: Vec<i64> = queue.all().await.unwrap().iter().map(|e| e.id).collect();
    queue.fail(&ids[1..2], "refused", 100).await.unwrap();

    let dropped = |argv: &[&str]| parse_drop(argv).unwrap();
    let selected = |args: &args::DropArgs, entries: &[Entry]| -> Vec<(String, String)> {
        entries
            .iter()
            .filter(|e| args.selects(e))
            .map(|e| (e.target.cache.to_string(), e.path.clone()))
            .collect()
    };
    let all = queue.all().await.unwrap();
    assert_eq!(
        selected(&dropped(&["--failed"]), &all),
        [("demo".to_owned(), path(2))]
    );
    assert_eq!(
        selected(&dropped(&[&path(1)]), &all),
        [("demo".to_owned(), path(1)), ("other".to_owned(), path(1))]
    );
    assert!(selected(&dropped(&["--failed", &path(1)]), &all).is_empty());
    assert_eq!(selected(&dropped(&["--all"]), &all).len(), 4);
    // Nothing to say which: refused, as is --all with a selection.
    for argv in [&[][..], &["--all", "--failed"]] {
        assert!(parse_drop(argv).is_err(), "{argv:?} parsed");
    }

    let failed: Vec<i64> = all
        .iter()
        .filter(|e| dropped(&["--failed"]).selects(e))
        .map(|e| e.id)
        .collect();
    queue.remove(&failed).await.unwrap();
    assert_eq!(queue.all().await.unwrap().len(), 3);
}
