//! The compose topology with real processes (issue #12): PostgreSQL, the
//! S3 server, two `larder-api` replicas and three `larder-worker`s, each
//! node on a host of its own (a network namespace; see
//! `larder_e2e::cluster`), sharing no directory. Real Nix and the `larder`
//! CLI push through both replicas at once while one worker and one replica
//! are killed with SIGKILL and restarted; then nothing acknowledged is
//! missing, everything is ingested, GC runs one pass at a time
//! cluster-wide, a revocation reaches both replicas within
//! `[jwt] revocation-refresh`, a fresh store pulls everything back with
//! signatures checked, and `larder-admin verify` finds nothing wrong.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use larder_e2e::cli::{self, CliOutput, admin, jwt_claims, make_token};
use larder_e2e::cluster::{Cluster, ClusterSettings, Node, S3Bucket};
use larder_e2e::nix::{Substituter, hash_part};
use larder_e2e::replica::PgDatabase;
use larder_e2e::tree::random_seed;
use larder_e2e::{Client, LarderCli, Nix, NixClient, StoreTree, nix_available, wait};

use crate::revocation::{cache_config, rs256_key, wait_refused};

/// `[jwt] revocation-refresh` of every node.
const REFRESH: Duration = Duration::from_secs(1);
/// Slack on top of [`REFRESH`] for a revocation to show: a request's
/// round trip and the poll interval on a busy 2-core machine.
const REFRESH_SLACK: Duration = Duration::from_secs(2);
/// Bound on ingesting everything, a killed worker's job included (it is
/// re-enqueued after 30 s of missed heartbeats).
const INGEST_LIMIT: Duration = Duration::from_secs(180);
const CACHE: &str = "cluster-cache";
/// Bound on the workers' first scheduled GC check (a minute after start).
const SCHEDULED_GC_LIMIT: Duration = Duration::from_secs(120);
/// What `larder-admin gc` says when another GC holds the lease.
const GC_BUSY: &str = "another garbage collection is running";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_survives_kills_and_keeps_everything() -> anyhow::Result<()> {
    if !nix_available("cluster_survives_kills_and_keeps_everything") {
        return Ok(());
    }
    let Some(s3) = S3Bucket::from_env()? else {
        eprintln!(
            "cluster_survives_kills_and_keeps_everything: LARDER_TEST_S3_ENDPOINT unset, skipping (scripts/test-all sets it)"
        );
        return Ok(());
    };
    let db = PgDatabase::create("larder_e2e_cluster").await?;
    let result = run_cluster(&db, &s3).await;
    db.drop_now().await?;
    result
}

async fn run_cluster(db: &PgDatabase, s3: &S3Bucket) -> anyhow::Result<()> {
    let started = Instant::now();
    let key = rs256_key().await?;
    let settings = ClusterSettings {
        db,
        s3,
        rs256_key: &key,
        revocation_refresh: &format!("{}s", REFRESH.as_secs()),
    };
    let mut cluster = Cluster::start(&settings).await?;
    eprintln!(
        "cluster up in {:?} ({})",
        started.elapsed(),
        if cluster.isolated() {
            "each node in its own network namespace"
        } else {
            "plain processes on 127.0.0.1"
        }
    );
    if cluster.isolated() {
        // No node sees another's files (configs, keys, temporary files).
        let (a, b) = (&cluster.apis[0], &cluster.apis[1]);
        anyhow::ensure!(
            a.can_read(&a.config()).await?,
            "api-a cannot read its own config"
        );
        anyhow::ensure!(
            !a.can_read(&b.config()).await?,
            "api-a can read api-b's config"
        );
        anyhow::ensure!(
            !cluster.workers[0]
                .can_read(cluster.operator_config())
                .await?,
            "worker-1 can read the operator's config"
        );
    }
    let result = scenario(&mut cluster, db).await;
    let result = result.map_err(|e| e.context(cluster.logs()));
    eprintln!("cluster scenario took {:?}", started.elapsed());
    result
}

/// Two trees built in the test's store, one per push route.
struct Trees {
    nix: Nix,
    /// `nix copy --to` replica A.
    copied: Vec<String>,
    copied_closure: Vec<String>,
    /// `larder push` to replica B.
    pushed: Vec<String>,
    pushed_closure: Vec<String>,
}

async fn scenario(cluster: &mut Cluster, db: &PgDatabase) -> anyhow::Result<()> {
    let operator = cluster.operator_config().to_owned();
    let root = make_token(
        &operator,
        "cluster-root",
        &[
            "--pull",
            "cluster-*",
            "--push",
            "cluster-*",
            "--create-cache",
            "cluster-*",
        ],
    )
    .await?;
    let (a_url, b_url) = (cluster.apis[0].url(), cluster.apis[1].url());
    Client::new(&a_url, &root).create_cache(CACHE).await?;
    // Created through A, its key is served by B as well.
    let public_key = Client::new(&b_url, &root).public_key(CACHE).await?;

    let trees = build_trees().await?;
    push_while_killing(cluster, db, &trees, &root).await?;

    // Everything acknowledged is ingested (the killed worker's job too),
    // whichever replica is asked.
    let all: Vec<&String> = trees
        .copied_closure
        .iter()
        .chain(&trees.pushed_closure)
        .collect();
    let ingest_start = Instant::now();
    for (i, url) in [&a_url, &b_url].into_iter().enumerate() {
        let client = Client::new(url, &root);
        wait::until(
            "every path to be ingested (Compression: zstd)",
            INGEST_LIMIT,
            Duration::from_millis(250),
            || async {
                for path in &all {
                    if client.narinfo(CACHE, path).await?.compression() != "zstd" {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            },
        )
        .await
        .with_context(|| format!("replica {}", ["a", "b"][i]))?;
    }
    eprintln!(
        "all {} paths ingested after another {:?}",
        all.len(),
        ingest_start.elapsed()
    );
    for node in cluster.apis.iter_mut().chain(&mut cluster.workers) {
        node.ensure_running()?;
    }

    revocation_reaches_both(cluster).await?;
    scheduled_gc_runs_once(cluster, db).await?;
    gc_runs_once(cluster, db).await?;

    // A fresh store pulls each tree through the replica it was not pushed
    // to, signatures checked, with every Nix under test.
    let pull = make_token(&operator, "cluster-pull", &["--pull", CACHE]).await?;
    for client in NixClient::under_test("cluster_survives_kills_and_keeps_everything") {
        for (url, tops, closure) in [
            (&b_url, &trees.copied, &trees.copied_closure),
            (&a_url, &trees.pushed, &trees.pushed_closure),
        ] {
            let fresh = Nix::with_client(&client)?;
            let netrc = fresh.write_netrc(url_host(url), &pull)?;
            let sub = Substituter {
                public_key: &public_key,
                netrc: &netrc,
            };
            let store = fresh
                .copy_from(&format!("{url}/{CACHE}"), &sub, tops)
                .await
                .with_context(|| format!("{client} pulling from {url}"))?;
            fresh
                .verify_built_by(&store, &public_key, closure, trees.nix.client())
                .await
                .with_context(|| format!("{client} pulling from {url}"))?;
        }
    }

    verify_clean(cluster, db).await?;

    let mut both = trees.copied_closure.clone();
    both.extend(trees.pushed_closure.iter().cloned());
    trees.nix.delete(&both).await?;
    Ok(())
}

/// A small DAG for `nix copy`, and a chain of a few MiB per path for
/// `larder push` (uploads long enough to kill a replica in the middle).
async fn build_trees() -> anyhow::Result<Trees> {
    let nix = Nix::new()?;
    let copied = StoreTree::small_dag(random_seed(), 24).build(&nix).await?;
    let sizes = [3 << 20, 3 << 20, 3 << 20, 3 << 20, 3 << 20, 3 << 20, 4096];
    let pushed = StoreTree::chain(random_seed(), "larder-e2e-cluster", &sizes)
        .build(&nix)
        .await?;
    let copied_closure = nix.closure(&copied).await?;
    let pushed_closure = nix.closure(&pushed).await?;
    Ok(Trees {
        nix,
        copied,
        copied_closure,
        pushed,
        pushed_closure,
    })
}

/// `nix copy --to` replica A and `larder push -j 1` to replica B at once;
/// once B has acknowledged a path and the push is still running, SIGKILLs
/// B, and once a worker is running an ingest job, SIGKILLs that worker
/// (whichever took the job: the queue, not the test, decides); each restarts
/// on the same address. Then checks that
/// every path acknowledged before the kill, and every path either push
/// reported, is there; a push the kill failed is re-run, and must find
/// what was acknowledged already present.
async fn push_while_killing(
    cluster: &mut Cluster,
    db: &PgDatabase,
    trees: &Trees,
    token: &str,
) -> anyhow::Result<()> {
    let (a_url, b_url) = (cluster.apis[0].url(), cluster.apis[1].url());
    let netrc = trees.nix.write_netrc(url_host(&a_url), token)?;
    let copy = {
        let url = format!("{a_url}/{CACHE}?compression=zstd");
        let nix = &trees.nix;
        let tops = trees.copied.clone();
        async move { nix.copy_to(&url, &netrc, &tops).await }
    };
    let user = LarderCli::new()?;
    user.login("b", &b_url, token).await?;
    let target = format!("b:{CACHE}");
    let push_args = |paths: &[String]| {
        let mut args = vec!["push".to_owned(), "-j".into(), "1".into(), target.clone()];
        args.extend(paths.iter().cloned());
        args
    };
    let args = push_args(&trees.pushed);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let push = tokio::spawn(cli::output(user.command(&args)?));

    let b_client = Client::new(&b_url, token);
    let (b, workers) = (&mut cluster.apis[1], &mut cluster.workers);
    let kill_b = async {
        let acked = wait::until(
            "replica B to acknowledge a path of the push",
            Duration::from_secs(60),
            Duration::from_millis(10),
            || async {
                anyhow::ensure!(
                    !push.is_finished(),
                    "the push ended before the kill (make the paths larger)"
                );
                let acked = present(&b_client, &trees.pushed_closure).await?;
                Ok((!acked.is_empty()).then_some(acked))
            },
        )
        .await?;
        anyhow::ensure!(
            !push.is_finished(),
            "the push ended before the kill (make the paths larger)"
        );
        b.kill_9()?;
        let down = Instant::now();
        b.start().await?;
        eprintln!(
            "killed replica B with {} of {} pushed paths acknowledged; back after {:?}",
            acked.len(),
            trees.pushed_closure.len(),
            down.elapsed()
        );
        anyhow::Ok(acked)
    };
    // A worker dies in the middle of ingest jobs: they are re-enqueued once
    // its heartbeats are missed, and a worker finishes them. Which worker
    // runs a job is the queue's choice, so the one holding a job is killed.
    let kill_worker = async {
        let (n, held) = wait::until(
            "a worker to be running an ingest job",
            Duration::from_secs(60),
            Duration::from_millis(20),
            || async {
                // lock_by is "worker-N-<ulid>": HOSTNAME, then the start's id.
                let row = db
                    .query(
                        "SELECT n || ' ' || count(*) FROM (SELECT split_part(lock_by, '-', 2) AS n \
                         FROM apalis.jobs WHERE status = 'Running' AND lock_by LIKE 'worker-%') j \
                         GROUP BY n ORDER BY n LIMIT 1",
                    )
                    .await?;
                let Some((n, held)) = row.trim().split_once(' ') else {
                    return Ok(None);
                };
                Ok(Some((n.parse::<usize>()?, held.parse::<u64>()?)))
            },
        )
        .await?;
        let worker = workers
            .get_mut(n.wrapping_sub(1))
            .with_context(|| format!("worker-{n} holds a job but is not in the cluster"))?;
        worker.kill_9()?;
        worker.start().await?;
        eprintln!("killed worker-{n} in the middle of {held} ingest job(s); restarted");
        anyhow::Ok(())
    };
    let kill = async {
        let (acked, ()) = tokio::try_join!(kill_b, kill_worker)?;
        anyhow::Ok(acked)
    };
    let (copied, acked) = tokio::join!(copy, kill);
    let acked = acked?;
    copied.context("nix copy to replica A while B and a worker were killed")?;
    let first = push.await??;

    // Acknowledged before the kill, or reported by a push: still there,
    // asked of the replica that was not killed.
    let a_client = Client::new(&a_url, token);
    let reported = reported_paths(&first);
    let must: BTreeSet<&String> = acked
        .iter()
        .chain(&reported)
        .chain(&trees.copied_closure)
        .collect();
    let must: Vec<String> = must.into_iter().cloned().collect();
    let there = present(&a_client, &must).await?;
    let lost: Vec<&String> = must.iter().filter(|p| !there.contains(*p)).collect();
    anyhow::ensure!(
        lost.is_empty(),
        "acknowledged paths lost: {lost:?}\n{first}"
    );

    if first.status.success() {
        let s = first.push_summary()?;
        anyhow::ensure!(
            s.failed == 0
                && s.pushed + s.already_present + s.deduplicated == trees.pushed_closure.len(),
            "{first}"
        );
        eprintln!("the push rode out the restart: {s:?}");
    } else {
        // A user re-runs a failed push: what was acknowledged is skipped.
        let rerun = user.ok(&args).await?;
        let again = reported_paths(&rerun);
        let repeated: Vec<&String> = again.iter().filter(|p| must.contains(p)).collect();
        anyhow::ensure!(
            repeated.is_empty(),
            "the re-run uploaded acknowledged paths again: {repeated:?}\n{rerun}"
        );
        eprintln!(
            "the push failed at the kill ({}); the re-run: {:?}",
            first.status,
            rerun.push_summary()?
        );
    }
    let missing: Vec<&String> = {
        let there = present(&a_client, &trees.pushed_closure).await?;
        trees
            .pushed_closure
            .iter()
            .filter(|p| !there.contains(*p))
            .collect()
    };
    anyhow::ensure!(missing.is_empty(), "pushed paths missing: {missing:?}");
    Ok(())
}

/// `larder-admin verify` (on worker-2's host) finds no orphan object, no
/// orphan staging object, no damaged chunk and no broken NAR, and exits 0.
/// A pack or chunk a killed ingest wrote before its commit is listed under
/// "pending writes": its write intent is still recorded, and GC deletes it
/// once the intent is older than the grace period (docs/gc.md).
async fn verify_clean(cluster: &Cluster, _db: &PgDatabase) -> anyhow::Result<()> {
    let out = cluster.workers[1].admin(&["verify"]).await?;
    let count = |label: &str| -> anyhow::Result<usize> {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .with_context(|| format!("no `{label}` line:\n{out}"))?
            .trim()
            .parse()
            .with_context(|| format!("`{label}` line:\n{out}"))
    };
    for label in [
        "orphan objects:",
        "orphan staging:",
        "damaged chunks:",
        "NARs marked broken:",
    ] {
        anyhow::ensure!(count(label)? == 0, "{label} not 0:\n{out}");
    }
    anyhow::ensure!(out.status.success(), "{out}");
    eprintln!(
        "larder-admin verify: {} chunks checked; {} pending write(s) of a killed ingest (GC's after the grace period)",
        count("chunks checked:")?,
        count("pending writes:")?
    );
    Ok(())
}

/// The paths of `paths` whose narinfo the replica serves.
async fn present(client: &Client, paths: &[String]) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    for path in paths {
        let resp = client
            .request(
                reqwest::Method::GET,
                &format!("/{CACHE}/{}.narinfo", hash_part(path)),
            )
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        match resp.status() {
            reqwest::StatusCode::OK => found.push(path.clone()),
            reqwest::StatusCode::NOT_FOUND => {}
            status => anyhow::bail!("narinfo of {path}: {status} {}", resp.text().await?),
        }
    }
    Ok(found)
}

/// Paths `larder push` printed as pushed or deduplicated (acknowledged).
fn reported_paths(out: &CliOutput) -> Vec<String> {
    out.stdout
        .lines()
        .filter_map(|l| {
            let rest = l
                .strip_prefix("pushed ")
                .or_else(|| l.strip_prefix("deduplicated "))?;
            let path = rest.split(" (").next()?;
            path.starts_with("/nix/store/").then(|| path.to_owned())
        })
        .collect()
}

/// A token both replicas accept is refused by both within the refresh
/// interval after `larder-admin revoke-token`.
async fn revocation_reaches_both(cluster: &Cluster) -> anyhow::Result<()> {
    let operator = cluster.operator_config();
    let token = make_token(operator, "cluster-revoked", &["--pull", CACHE]).await?;
    let jti = jwt_claims(&token)?["jti"]
        .as_str()
        .context("no jti")?
        .to_owned();
    let urls: Vec<String> = cluster.apis.iter().map(Node::url).collect();
    for url in &urls {
        let (status, body) = cache_config(url, &token, CACHE).await?;
        anyhow::ensure!(
            status == reqwest::StatusCode::OK,
            "{url} before revocation: {body}"
        );
    }
    admin(operator, &["revoke-token", "--jti", &jti]).await?;
    let revoked = Instant::now();
    let (lat_a, lat_b) = tokio::try_join!(
        wait_refused("a", &urls[0], &token, CACHE, revoked),
        wait_refused("b", &urls[1], &token, CACHE, revoked),
    )?;
    for (name, lat) in [("a", lat_a), ("b", lat_b)] {
        anyhow::ensure!(
            lat <= REFRESH + REFRESH_SLACK,
            "replica {name} refused the revoked token only {lat:?} after revoke-token (refresh {REFRESH:?})"
        );
    }
    eprintln!("revocation refused by replica A after {lat_a:?}, by B after {lat_b:?}");
    Ok(())
}

/// The workers' scheduler: every worker checks a minute after its start
/// whether GC is due (no pass yet: it is), and worker-2 and worker-3 check
/// at about the same moment; one pass runs (one audit row), the others
/// find the lease taken or the pass just finished.
async fn scheduled_gc_runs_once(cluster: &Cluster, db: &PgDatabase) -> anyhow::Result<()> {
    let waiting = Instant::now();
    // A finished pass sets last_finished_at as it gives the lease up (its
    // audit row is written just before).
    wait::until(
        "a worker's scheduled GC pass to finish",
        SCHEDULED_GC_LIMIT,
        Duration::from_millis(250),
        || async {
            let done = db
                .query(
                    "SELECT count(*) FROM leases WHERE name = 'gc' \
                     AND holder IS NULL AND last_finished_at IS NOT NULL",
                )
                .await?;
            Ok((done.trim() == "1").then_some(()))
        },
    )
    .await?;
    let passes = gc_passes(cluster).await?;
    // Two passes back to back would mean a worker read "no pass yet",
    // then took the lease the first pass had just released: the due check
    // and the lease are separate statements (`periodic::tick`).
    anyhow::ensure!(
        passes.len() == 1 && passes[0].starts_with("worker-"),
        "want one scheduled GC pass by a worker: {passes:?}"
    );
    // Workers that found the lease taken count a run too; those that found
    // the pass finished do not.
    let mut attempts = 0;
    for worker in &cluster.workers {
        attempts += gc_runs_metric(&worker.metrics().await?);
    }
    eprintln!(
        "scheduled gc: one pass ({}) after another {:?}; {attempts} worker(s) tried to take the lease",
        passes[0],
        waiting.elapsed()
    );
    Ok(())
}

/// Sum of `larder_jobs_total{kind="garbage-collection",…}` in a worker's
/// `/metrics`.
fn gc_runs_metric(text: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.starts_with("larder_jobs_total{") && l.contains("kind=\"garbage-collection\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// GC is one pass at a time cluster-wide. While the lease is held (here by
/// a stand-in holder), `larder-admin gc` on every worker host is refused;
/// then three at once: each either runs a pass (one audit row) or is
/// refused. The workers' scheduled pass stays the only one (12 h interval).
async fn gc_runs_once(cluster: &Cluster, db: &PgDatabase) -> anyhow::Result<()> {
    let holder = "e2e-stand-in";
    db.query(&format!(
        "INSERT INTO leases (name, holder, expires_at) VALUES ('gc', '{holder}', {}) \
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at",
        unix_now() + 600
    ))
    .await?;
    let held = gc_everywhere(cluster).await?;
    db.query(&format!(
        "UPDATE leases SET holder = NULL, expires_at = 0 WHERE name = 'gc' AND holder = '{holder}'"
    ))
    .await?;
    for out in &held {
        anyhow::ensure!(
            !out.status.success() && out.stderr.contains(GC_BUSY),
            "gc ran while the lease was held:\n{out}"
        );
    }

    let outs = gc_everywhere(cluster).await?;
    let mut ran = 0;
    for out in &outs {
        if out.status.success() {
            ran += 1;
        } else {
            anyhow::ensure!(out.stderr.contains(GC_BUSY), "gc failed:\n{out}");
        }
    }
    anyhow::ensure!(ran >= 1, "no gc ran");

    let passes = gc_passes(cluster).await?;
    let by_admin = passes
        .iter()
        .filter(|s| s.starts_with("larder-admin-"))
        .count();
    let by_workers = passes.iter().filter(|s| s.starts_with("worker-")).count();
    anyhow::ensure!(
        by_admin == ran && by_admin + by_workers == passes.len() && by_workers == 1,
        "gc audit rows {passes:?}; {ran} larder-admin gc succeeded"
    );
    eprintln!(
        "gc: refused on all {} hosts while the lease was held; then {ran} of {} concurrent passes ran, {} refused; {by_workers} scheduled worker pass(es)",
        held.len(),
        outs.len(),
        outs.len() - ran
    );
    Ok(())
}

/// `larder-admin gc` on the three worker hosts at once.
async fn gc_everywhere(cluster: &Cluster) -> anyhow::Result<Vec<CliOutput>> {
    let [w1, w2, w3] = cluster.workers.as_slice() else {
        anyhow::bail!("{} workers, want 3", cluster.workers.len());
    };
    let (o1, o2, o3) = tokio::try_join!(w1.admin(&["gc"]), w2.admin(&["gc"]), w3.admin(&["gc"]))?;
    Ok(vec![o1, o2, o3])
}

/// Subjects of the audit trail's `gc` rows, oldest first.
async fn gc_passes(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    let out = admin(
        cluster.operator_config(),
        &["audit", "--kind", "gc", "--json"],
    )
    .await?;
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).with_context(|| format!("audit line {l}"))?;
            Ok(v["subject"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The host of `http://HOST:PORT`.
fn url_host(url: &str) -> &str {
    let rest = url.trim_start_matches("http://");
    rest.rsplit_once(':').map_or(rest, |(host, _)| host)
}
