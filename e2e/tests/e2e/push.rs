//! `larder push` (the real CLI) against the embedded default: a push-only
//! CI token on a private cache, re-runs, `--no-closure`, `--stdin`,
//! failures, a server killed in the middle of a push, and a push that
//! waits while the server's staging quota is reached.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use larder_e2e::cli::{self, CliOutput, jwt_claims, make_token, push_args};
use larder_e2e::nix::Substituter;
use larder_e2e::tree::random_seed;
use larder_e2e::{
    Client, LarderCli, Nix, PushSummary, Server, ServerOptions, StoreTree, Worker, nix_available,
    wait,
};

/// Requires `larder push`'s summary to be exactly `want`.
fn expect_summary(out: &CliOutput, want: PushSummary) -> anyhow::Result<()> {
    let got = out.push_summary()?;
    anyhow::ensure!(got == want, "summary {got:?}, want {want:?}\n{out}");
    Ok(())
}

/// Substitutes `tops` from `cache` into a fresh store with a pull-only
/// token in the netrc and signature checking on, and verifies `closure`.
async fn substitute_and_verify(
    server: &Server,
    cache: &str,
    public_key: &str,
    pull_token: &str,
    tops: &[String],
    closure: &[String],
) -> anyhow::Result<()> {
    let fresh = Nix::new()?;
    let netrc = fresh.write_netrc("127.0.0.1", pull_token)?;
    let sub = Substituter {
        public_key,
        netrc: &netrc,
    };
    let store = fresh
        .copy_from(&format!("{}/{cache}", server.url()), &sub, tops)
        .await?;
    fresh.verify(&store, public_key, closure).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn larder_push_closure_private_push_only_token() -> anyhow::Result<()> {
    if !nix_available("larder_push_closure_private_push_only_token") {
        return Ok(());
    }
    let mut server = Server::start_embedded(ServerOptions::default()).await?;
    let cache = "e2e-push";
    let config = server.config_path();

    // The operator creates a private cache with the root token.
    let operator = LarderCli::new()?;
    operator
        .login("root", &server.url(), server.token())
        .await?;
    operator
        .ok(&["cache", "create", &format!("root:{cache}")])
        .await?;
    let root = server.client();
    let public_key = root.public_key(cache).await?;
    let anonymous = reqwest::get(root.url(&format!("/{cache}/nix-cache-info"))).await?;
    assert!(
        !anonymous.status().is_success(),
        "the new cache is not private: nix-cache-info answered {} without a token",
        anonymous.status()
    );

    // A push-only CI token, as the README's make-token line mints it.
    let push_token = make_token(&config, "ci", &["--push", cache]).await?;
    let perms = &jwt_claims(&push_token)?["https://jwt.attic.rs/v1"]["caches"];
    assert_eq!(
        perms,
        &serde_json::json!({ cache: { "w": 1 } }),
        "push token claims"
    );
    let ci = LarderCli::new()?;
    ci.login("e2e", &server.url(), &push_token).await?;
    let target = format!("e2e:{cache}");

    let nix = Nix::new()?;
    let tops = StoreTree::small_dag(random_seed(), 60).build(&nix).await?;
    let closure = nix.closure(&tops).await?;
    assert!(closure.len() >= 50, "closure of {} paths", closure.len());
    let infos = nix.path_info(&closure).await?;
    assert!(
        infos.iter().filter(|i| i.references.len() >= 2).count() >= 10,
        "too few paths with several references"
    );

    let started = Instant::now();
    let first = ci.ok(&push_args(&[], &target, &tops)).await?;
    let push_time = started.elapsed();
    first.ensure_plain()?;
    expect_summary(
        &first,
        PushSummary {
            pushed: closure.len(),
            ..PushSummary::default()
        },
    )?;
    for path in &closure {
        assert!(
            first.stdout.contains(&format!("pushed {path} (")),
            "no line for {path}\n{first}"
        );
    }
    // `-j 4` runs uploads of a path and of its references at once: count
    // the paths that finished before one of their references (a window in
    // which the cache serves a path whose closure is incomplete).
    let order: Vec<&str> = first
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("pushed /"))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let position = |p: &str| order.iter().position(|o| p.strip_prefix('/') == Some(*o));
    let early = infos
        .iter()
        .filter(|i| {
            i.references
                .iter()
                .any(|r| r != &i.path && position(r) > position(&i.path))
        })
        .count();
    // Every path is in the cache, references included, signed.
    for info in &infos {
        let ni = root.narinfo(cache, &info.path).await?;
        assert!(ni.get("Sig").is_some(), "unsigned narinfo:\n{}", ni.text);
    }
    // Push-only: the token may not read NARs.
    let ni = root.narinfo(cache, &tops[0]).await?;
    let status = Client::new(&server.url(), &push_token)
        .request(reqwest::Method::GET, &format!("/{cache}/{}", ni.url()))
        .send()
        .await?
        .status();
    assert!(
        status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN,
        "a push-only token read a NAR: {status}"
    );

    // Again: everything is there already.
    let again = ci.ok(&push_args(&[], &target, &tops)).await?;
    again.ensure_plain()?;
    expect_summary(
        &again,
        PushSummary {
            already_present: closure.len(),
            ..PushSummary::default()
        },
    )?;

    // --no-closure pushes only the path named, not its dependency; --stdin
    // reads the paths (and pushes their closures).
    let extra = StoreTree::pairs(random_seed(), "larder-e2e-push", 2)
        .build(&nix)
        .await?;
    let (solo, piped) = (&extra[0], &extra[1]);
    let solo_closure = nix.closure(std::slice::from_ref(solo)).await?;
    let piped_closure = nix.closure(std::slice::from_ref(piped)).await?;
    let solo_dep = solo_closure
        .iter()
        .find(|p| *p != solo)
        .expect("pairs have a dependency")
        .clone();
    let out = ci
        .ok(&push_args(
            &["--no-closure"],
            &target,
            std::slice::from_ref(solo),
        ))
        .await?;
    out.ensure_plain()?;
    expect_summary(
        &out,
        PushSummary {
            pushed: 1,
            ..PushSummary::default()
        },
    )?;
    root.narinfo(cache, solo).await?;
    let status = root
        .request(
            reqwest::Method::GET,
            &format!("/{cache}/{}.narinfo", larder_e2e::nix::hash_part(&solo_dep)),
        )
        .send()
        .await?
        .status();
    assert_eq!(
        status,
        reqwest::StatusCode::NOT_FOUND,
        "--no-closure pushed the dependency {solo_dep}"
    );

    let out = cli::output_with_stdin(
        ci.command(&["push", "--stdin", &target])?,
        &format!("{piped}\n"),
    )
    .await?
    .success()?;
    out.ensure_plain()?;
    expect_summary(
        &out,
        PushSummary {
            pushed: piped_closure.len(),
            ..PushSummary::default()
        },
    )?;

    // Everything pushed with its closure substitutes into a fresh store,
    // signatures checked, with a pull token.
    let pull_token = make_token(&config, "reader", &["--pull", cache]).await?;
    let mut all_tops = tops.clone();
    all_tops.push(piped.clone());
    let mut all = closure.clone();
    all.extend(piped_closure.iter().cloned());
    substitute_and_verify(&server, cache, &public_key, &pull_token, &all_tops, &all).await?;

    // Failures exit non-zero: a path that does not exist, a stopped server.
    let missing = "/nix/store/00000000000000000000000000000000-larder-e2e-missing";
    let out = ci.run(&["push", &target, missing]).await?;
    assert!(
        !out.status.success(),
        "pushing a missing path succeeded\n{out}"
    );
    out.ensure_plain()?;
    server.stop().await?;
    let started = Instant::now();
    let out = ci
        .run(&push_args(&[], &target, std::slice::from_ref(&solo_dep)))
        .await?;
    assert!(
        !out.status.success(),
        "a push to a stopped server succeeded\n{out}"
    );
    out.ensure_plain()?;
    eprintln!(
        "larder push of {} paths took {push_time:?} ({early} finished before one of their references); \
         a push to a stopped server failed after {:?}",
        closure.len(),
        started.elapsed()
    );

    nix.delete(&closure).await?;
    nix.delete(&solo_closure).await?;
    nix.delete(&piped_closure).await?;
    Ok(())
}

/// Names of the `.tmp-*` files (uploads in flight, or left by a crash)
/// under `dir`.
fn temp_files(dir: &Path) -> HashSet<OsString> {
    std::fs::read_dir(dir).map_or_else(
        |_| HashSet::new(),
        |entries| {
            entries
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().starts_with(".tmp-"))
                .collect()
        },
    )
}

/// What one interruption looked like.
#[derive(Debug)]
struct Interruption {
    /// Uploads the server had staged when it was killed.
    staged: usize,
    /// Uploads streaming into staging at the kill.
    in_flight: usize,
    /// Time from SIGKILL to `/_ready` on the same port.
    downtime: Duration,
    /// The interrupted push, if it was left running; `None` if it was killed
    /// with the server.
    push: Option<CliOutput>,
}

/// Starts `larder push -j 1 TARGET TOPS…`, SIGKILLs the server once one
/// upload is staged and the next is streaming into staging (and the push
/// too with `kill_push`), and restarts the server on the same port.
async fn interrupt_push(
    server: &mut Server,
    user: &LarderCli,
    target: &str,
    tops: &[String],
    kill_push: bool,
) -> anyhow::Result<Interruption> {
    let push = tokio::spawn(cli::output(user.command(&push_args(
        &["-j", "1"],
        target,
        tops,
    ))?));
    let staging = server.staging_dir();
    // Leftovers of an earlier kill are not uploads in flight.
    let leftovers = temp_files(&staging);
    let count_in_flight = || temp_files(&staging).difference(&leftovers).count();
    // Uploads recorded: whole NARs ("staged upload") and chunk-level
    // pushes' publishes of their prepared NARs.
    let recorded = || {
        let log = server.log_text();
        log.matches("staged upload").count() + log.matches("published prepared NAR").count()
    };
    let before = recorded();
    let seen = wait::until(
        "an upload in flight after one was staged",
        Duration::from_secs(60),
        Duration::from_millis(2),
        || async {
            anyhow::ensure!(
                !push.is_finished(),
                "the push ended before an upload was seen in flight (make the paths larger)"
            );
            let in_flight = count_in_flight();
            let staged = recorded() - before;
            Ok((in_flight > 0 && staged > 0).then_some(in_flight))
        },
    )
    .await;
    let in_flight = seen.map_err(|e| e.context(server.log()))?;
    let staged = recorded() - before;
    anyhow::ensure!(
        !push.is_finished(),
        "the push finished before the kill (make the paths larger)"
    );
    server.kill_9()?;
    if kill_push {
        // Dropping the output future kills the CLI (kill_on_drop).
        push.abort();
    }
    let down = Instant::now();
    server.start_again().await?;
    let downtime = down.elapsed();
    let push = if kill_push {
        let _ = push.await;
        None
    } else {
        // It rides out the restart with retries, or fails; either way it ends.
        let out = push.await??;
        out.ensure_plain()?;
        Some(out)
    };
    Ok(Interruption {
        staged,
        in_flight,
        downtime,
        push,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_interrupted_then_rerun_completes() -> anyhow::Result<()> {
    if !nix_available("push_interrupted_then_rerun_completes") {
        return Ok(());
    }
    let mut server = Server::start_embedded(ServerOptions::default()).await?;
    let cache = "e2e-interrupted";
    let root = server.client();
    root.create_cache(cache).await?;
    let public_key = root.public_key(cache).await?;
    let user = LarderCli::new()?;
    user.login("e2e", &server.url(), server.token()).await?;
    let target = format!("e2e:{cache}");

    // A few MiB of random data per path: each upload takes long enough to
    // be caught in flight.
    let nix = Nix::new()?;
    let sizes = [4 << 20, 4 << 20, 4 << 20, 4 << 20, 4 << 20, 4096];
    let mut all_tops = Vec::new();
    let mut all = Vec::new();
    // Round 1: only the server dies; the push is left running. Round 2:
    // the push dies with it (a CI runner lost), so the re-run has work.
    for kill_push in [false, true] {
        let tops = StoreTree::chain(random_seed(), "larder-e2e-interrupted", &sizes)
            .build(&nix)
            .await?;
        let closure = nix.closure(&tops).await?;
        assert_eq!(closure.len(), sizes.len());
        let interruption = interrupt_push(&mut server, &user, &target, &tops, kill_push).await?;

        let rerun = user.ok(&push_args(&["-j", "1"], &target, &tops)).await?;
        rerun.ensure_plain()?;
        let summary = rerun.push_summary()?;
        assert_eq!(summary.failed, 0, "{rerun}");
        assert_eq!(
            summary.pushed + summary.already_present + summary.deduplicated,
            closure.len(),
            "{rerun}"
        );
        if kill_push {
            assert!(
                summary.pushed > 0,
                "the push was killed with the server, yet the re-run found everything present\n{rerun}"
            );
        }
        let first = interruption
            .push
            .as_ref()
            .map(|o| (o.status, o.push_summary().ok()));
        eprintln!(
            "push killed too: {kill_push}; server killed after {} staged upload(s), {} in flight; \
             down {:?}; interrupted push: {first:?}; re-run: {summary:?}",
            interruption.staged, interruption.in_flight, interruption.downtime
        );
        if let Some(out) = interruption.push.filter(|o| !o.status.success()) {
            eprintln!("interrupted push stderr:\n{}", out.stderr);
        }
        all_tops.extend(tops);
        all.extend(closure);
    }

    let fresh = Nix::new()?;
    let netrc = fresh.write_netrc("127.0.0.1", server.token())?;
    let sub = Substituter {
        public_key: &public_key,
        netrc: &netrc,
    };
    let store = fresh
        .copy_from(&format!("{}/{cache}", server.url()), &sub, &all_tops)
        .await?;
    fresh.verify(&store, &public_key, &all).await?;
    nix.delete(&all).await?;
    Ok(())
}

/// `[staging] max-nars = 1` and no worker: the first path stages, the
/// next gets 503 `StagingFull`, and `larder push` says it is waiting and
/// retries instead of failing; once a `larder-worker` ingests the backlog
/// the push completes, and every path substitutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_waits_while_staging_is_full() -> anyhow::Result<()> {
    if !nix_available("push_waits_while_staging_is_full") {
        return Ok(());
    }
    let server = Server::start_embedded(ServerOptions {
        staging_max_nars: Some(1),
        ..ServerOptions::without_workers()
    })
    .await?;
    let cache = "e2e-quota";
    let root = server.client();
    root.create_cache(cache).await?;
    let public_key = root.public_key(cache).await?;
    let user = LarderCli::new()?;
    user.login("e2e", &server.url(), server.token()).await?;
    let target = format!("e2e:{cache}");
    let nix = Nix::new()?;
    // The second path is refused while its 8 MiB body is still being sent.
    let tops = StoreTree::chain(random_seed(), "larder-e2e-quota", &[8192, 8 << 20, 8192])
        .build(&nix)
        .await?;
    let closure = nix.closure(&tops).await?;
    assert_eq!(closure.len(), 3);

    let push = tokio::spawn(cli::output(user.command(&push_args(
        &["-j", "1"],
        &target,
        &tops,
    ))?));
    // Until the server has refused an upload for the quota.
    let metrics = root.url("/metrics");
    wait::until(
        "an upload refused with StagingFull",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let text = reqwest::get(&metrics).await?.text().await?;
            let refused = text.lines().any(|l| {
                l.starts_with("larder_uploads_refused_total{")
                    && l.contains("reason=\"staging_full\"")
                    && !l.ends_with(" 0")
            });
            Ok(refused.then_some(()))
        },
    )
    .await?;
    anyhow::ensure!(!push.is_finished(), "the push ended instead of waiting");
    let worker = Worker::start(&server)?;
    let out = push.await??;
    worker.ensure_running()?;
    let out = out.success()?;
    expect_summary(
        &out,
        PushSummary {
            pushed: 3,
            ..PushSummary::default()
        },
    )?;
    anyhow::ensure!(
        out.stderr.contains("waiting") && out.stderr.contains("staging is full"),
        "the push did not say it was waiting:\n{out}"
    );
    // A refusal before the body was read is an answer, not a broken
    // connection: no retries of transport errors.
    anyhow::ensure!(
        !out.stderr.contains("retrying"),
        "the push saw failures besides the quota:\n{out}"
    );
    eprintln!("push that waited for the staging quota:\n{}", out.stderr);
    substitute_and_verify(&server, cache, &public_key, server.token(), &tops, &closure).await?;
    nix.delete(&closure).await?;
    Ok(())
}
