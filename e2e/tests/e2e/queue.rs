//! `larder queue` from a real Nix `post-build-hook`, drained while the
//! server is down (entries stay, with their failure) and after it is back
//! (pushed, substituted by real Nix); `larder watch-store` pushing what a
//! real build registers, across a server restart, and stopping cleanly on
//! SIGTERM.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use larder_e2e::cli::{CliOutput, make_token};
use larder_e2e::nix::Substituter;
use larder_e2e::tree::random_seed;
use larder_e2e::{Client, LarderCli, Nix, Server, ServerOptions, StoreTree, bin_path, wait};

/// Bound on a path reaching the cache once the server is up.
const ARRIVAL_LIMIT: Duration = Duration::from_secs(180);

/// The README's post-build hook, with this user's directories. Nix 2.8.0
/// passes an empty `OUT_PATHS`, hence the fallback to `DRV_PATH`'s outputs.
fn write_hook(user: &LarderCli, target: &str) -> anyhow::Result<std::path::PathBuf> {
    let script = format!(
        "#!/bin/sh\nset -eu\nset -f\nexport XDG_CONFIG_HOME='{}' XDG_STATE_HOME='{}'\nOUT_PATHS=${{OUT_PATHS:-$(nix-store --query --outputs \"$DRV_PATH\")}}\nexec '{}' queue push {target} $OUT_PATHS\n",
        user.config_home().display(),
        user.state_home().display(),
        bin_path("larder")?.display(),
    );
    let path = user.dir().join("post-build-hook");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Whether the cache serves a narinfo for every path.
async fn all_present(client: &Client, cache: &str, paths: &[String]) -> bool {
    for path in paths {
        if client.narinfo(cache, path).await.is_err() {
            return false;
        }
    }
    true
}

/// Substitutes `tops` with real Nix (pull token, signatures checked) and
/// verifies their closure.
async fn pull_back(server: &Server, cache: &str, tops: &[String]) -> anyhow::Result<()> {
    let public_key = server.client().public_key(cache).await?;
    let pull = make_token(&server.config_path(), "puller", &["--pull", cache]).await?;
    let fresh = Nix::new()?;
    let closure = fresh.closure(tops).await?;
    let netrc = fresh.write_netrc("127.0.0.1", &pull)?;
    let sub = Substituter {
        public_key: &public_key,
        netrc: &netrc,
    };
    let store = fresh
        .copy_from(&format!("{}/{cache}", server.url()), &sub, tops)
        .await?;
    fresh.verify(&store, &public_key, &closure).await
}

/// `larder queue status`'s first line: (pending, failed).
fn status_counts(out: &CliOutput) -> anyhow::Result<(usize, usize)> {
    let first = out.stdout.lines().next().unwrap_or("");
    let counts = first.rsplit(": ").next().unwrap_or("");
    let mut parts = counts.split(", ").map(|p| {
        p.split(' ')
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .with_context(|| format!("bad status line {first:?}"))
    });
    let pending = parts.next().context("no pending count")??;
    let failed = parts.next().context("no failed count")??;
    Ok((pending, failed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_from_post_build_hook_survives_server_restart() -> anyhow::Result<()> {
    if !larder_e2e::nix_available("queue_from_post_build_hook_survives_server_restart") {
        return Ok(());
    }
    let mut server = Server::start_embedded(ServerOptions::default()).await?;
    let cache = "e2e-queue";
    let push = make_token(&server.config_path(), "builder", &["--push", cache]).await?;
    let root = LarderCli::new()?;
    root.login("root", &server.url(), server.token()).await?;
    root.ok(&["cache", "create", &format!("root:{cache}")])
        .await?;
    let user = LarderCli::new()?;
    user.login("e2e", &server.url(), &push).await?;
    let hook = write_hook(&user, &format!("e2e:{cache}"))?;

    // A real build: Nix runs the hook after each derivation.
    let nix = Nix::new()?;
    let hook_arg = hook.to_string_lossy().into_owned();
    let tops = StoreTree::binary_tree(random_seed(), 5)
        .build_with(&nix, &[("post-build-hook", &hook_arg)])
        .await?;
    let closure = nix.closure(&tops).await?;
    // A path that is no longer in the store (garbage-collected) is dropped.
    let gone = "/nix/store/00000000000000000000000000000000-larder-e2e-gone";
    user.ok(&["queue", "push", &format!("e2e:{cache}"), gone])
        .await?;
    let status = user.ok(&["queue", "status"]).await?;
    assert_eq!(status_counts(&status)?, (closure.len() + 1, 0), "{status}");
    for path in &closure {
        assert!(status.stdout.contains(path), "{path} not queued\n{status}");
    }

    // Server down: the drain fails, every entry stays with its error.
    server.stop().await?;
    let down = user.run(&["queue", "drain"]).await?;
    assert!(
        !down.status.success(),
        "drain succeeded with the server down\n{down}"
    );
    assert!(down.stdout.contains("1 dropped"), "{down}");
    let status = user.ok(&["queue", "status"]).await?;
    assert_eq!(status_counts(&status)?, (0, closure.len()), "{status}");
    assert!(status.stdout.contains("1 attempts"), "{status}");

    // Back up on the same port: the next drain pushes everything.
    server.start_again().await?;
    let up = user.ok(&["queue", "drain"]).await?;
    up.ensure_plain()?;
    let summary = up.push_summary()?;
    assert_eq!(
        summary.pushed + summary.already_present,
        closure.len(),
        "{up}"
    );
    assert_eq!(summary.failed, 0, "{up}");
    let status = user.ok(&["queue", "status"]).await?;
    assert_eq!(status_counts(&status)?, (0, 0), "{status}");
    // An empty queue drains to nothing, successfully.
    user.ok(&["queue", "drain"]).await?;
    pull_back(&server, cache, &tops).await?;

    // The service's way: `drain --watch` pushes what is queued while it
    // runs, and stops on SIGTERM with exit status 0.
    let log_path = user.dir().join("drain.log");
    let mut cmd = user.command(&["queue", "drain", "--watch"])?;
    cmd.stdout(std::fs::File::create(&log_path)?)
        .stderr(Stdio::null());
    let mut drainer = cmd.spawn().context("spawning larder queue drain --watch")?;
    let later = StoreTree::binary_tree(random_seed(), 2).build(&nix).await?;
    let mut args = vec![
        "queue".to_owned(),
        "push".to_owned(),
        format!("e2e:{cache}"),
    ];
    args.extend(later.iter().cloned());
    user.ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await?;
    let later_closure = nix.closure(&later).await?;
    let client = server.client();
    wait::until(
        "drain --watch to push",
        ARRIVAL_LIMIT,
        Duration::from_millis(250),
        || async {
            Ok(all_present(&client, cache, &later_closure)
                .await
                .then_some(()))
        },
    )
    .await
    .with_context(|| read(&log_path))?;
    let status = terminate(&mut drainer).await?;
    assert!(
        status.success(),
        "drain --watch exited with {status}\n{}",
        read(&log_path)
    );
    let status = user.ok(&["queue", "status"]).await?;
    assert_eq!(status_counts(&status)?, (0, 0), "{status}");
    Ok(())
}

/// Sends SIGTERM to `child` (`watch-store`, `drain --watch`) and waits
/// (bounded) for its exit status.
async fn terminate(child: &mut tokio::process::Child) -> anyhow::Result<std::process::ExitStatus> {
    let pid = child.id().context("already reaped")?;
    // SAFETY: kill(2) on our own child, which has not been reaped.
    unsafe {
        libc::kill(libc::pid_t::try_from(pid)?, libc::SIGTERM);
    }
    Ok(tokio::time::timeout(ARRIVAL_LIMIT, child.wait())
        .await
        .context("SIGTERM ignored")??)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_store_pushes_new_paths_across_server_restart() -> anyhow::Result<()> {
    if !larder_e2e::nix_available("watch_store_pushes_new_paths_across_server_restart") {
        return Ok(());
    }
    // watch-store pushes whatever the store registers: the other tests'
    // builds (up to 64 MiB paths) would be pushed too and slow the server's
    // restarts below, so they wait.
    larder_e2e::nix::with_store_to_itself(watch_store_scenario()).await
}

async fn watch_store_scenario() -> anyhow::Result<()> {
    let mut server = Server::start_embedded(ServerOptions::default()).await?;
    let cache = "e2e-watch";
    let user = LarderCli::new()?;
    user.login("e2e", &server.url(), server.token()).await?;
    user.ok(&["cache", "create", &format!("e2e:{cache}")])
        .await?;
    let (stdout, stderr) = (user.dir().join("watch.out"), user.dir().join("watch.err"));
    let mut cmd = user.command(&[
        "watch-store",
        &format!("e2e:{cache}"),
        "--debounce",
        "500ms",
    ])?;
    cmd.stdout(std::fs::File::create(&stdout)?)
        .stderr(std::fs::File::create(&stderr)?)
        .stdin(Stdio::null());
    let mut watcher = cmd.spawn().context("spawning larder watch-store")?;
    let log = || {
        format!(
            "watch-store stdout:\n{}\nstderr:\n{}",
            read(&stdout),
            read(&stderr)
        )
    };
    wait::until(
        "watch-store to start",
        ARRIVAL_LIMIT,
        Duration::from_millis(100),
        || async { Ok(read(&stderr).contains("watching").then_some(())) },
    )
    .await
    .with_context(log)?;

    // A build while it watches: its closure arrives.
    let nix = Nix::new()?;
    let client = server.client();
    let first = StoreTree::binary_tree(random_seed(), 3).build(&nix).await?;
    let first_closure = nix.closure(&first).await?;
    wait::until(
        "the first build in the cache",
        ARRIVAL_LIMIT,
        Duration::from_millis(250),
        || async {
            Ok(all_present(&client, cache, &first_closure)
                .await
                .then_some(()))
        },
    )
    .await
    .with_context(log)?;

    // Server down: a second build is seen, its push fails and stays queued.
    server.stop().await?;
    let second = StoreTree::binary_tree(random_seed(), 3).build(&nix).await?;
    let second_closure = nix.closure(&second).await?;
    wait::until(
        "a failed push while the server is down",
        ARRIVAL_LIMIT,
        Duration::from_millis(250),
        || async {
            let status = user.ok(&["queue", "status"]).await?;
            let failed = second.iter().all(|p| {
                status
                    .stdout
                    .lines()
                    .any(|l| l.starts_with("failed") && l.contains(p.as_str()))
            });
            Ok(failed.then_some(()))
        },
    )
    .await
    .with_context(log)?;

    // Back up on the same port: retried after the backoff, it arrives.
    server.start_again().await?;
    let client = server.client();
    wait::until(
        "the second build in the cache",
        ARRIVAL_LIMIT,
        Duration::from_millis(250),
        || async {
            Ok(all_present(&client, cache, &second_closure)
                .await
                .then_some(()))
        },
    )
    .await
    .with_context(log)?;

    // Down again, a third build: SIGTERM while its push is in flight (it
    // retries a dead server) ends the command cleanly, and the paths stay
    // queued for the next drain.
    server.stop().await?;
    let pushes = || read(&stderr).matches(": pushing ").count();
    let before = pushes();
    let third = StoreTree::binary_tree(random_seed(), 2).build(&nix).await?;
    wait::until(
        "a push after the third build",
        ARRIVAL_LIMIT,
        Duration::from_millis(50),
        || async { Ok((pushes() > before).then_some(())) },
    )
    .await
    .with_context(log)?;
    let status = terminate(&mut watcher).await?;
    assert!(
        status.success(),
        "watch-store exited with {status}\n{}",
        log()
    );
    assert!(read(&stderr).contains("stopped"), "{}", log());
    eprintln!("{}", log());
    let queued = user.ok(&["queue", "status"]).await?;
    for path in &third {
        assert!(
            queued.stdout.contains(path.as_str()),
            "{path} not queued after SIGTERM\n{queued}"
        );
    }
    server.start_again().await?;
    user.ok(&["queue", "drain"]).await?;
    let third_closure = nix.closure(&third).await?;
    anyhow::ensure!(
        all_present(&server.client(), cache, &third_closure).await,
        "the third build is not in the cache after the drain"
    );
    pull_back(&server, cache, &second).await?;
    pull_back(&server, cache, &third).await
}
