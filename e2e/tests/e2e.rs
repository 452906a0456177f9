//! End-to-end tests: real `larder-api` / `larder-worker` binaries, real Nix,
//! loopback only. Build the binaries first:
//!
//! ```text
//! cargo build --workspace --bins && cargo test -p larder-e2e
//! ```
//!
//! Each test is self-contained (its own data directory, port, cache, Nix
//! contexts and freshly seeded store paths) and waits only by bounded polling.
//! The Nix scenarios (substitution with signatures checked, strangers refused,
//! `nix copy --to` in every compression) run against every client of
//! [`NixClient::under_test`]: the host's Nix 2.8 and the newer 2.26 in a chroot.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use larder_e2e::cli::make_token;
use larder_e2e::client::{Download, typed_base16, typed_nix_base32};
use larder_e2e::nix::{Substituter, base_name};
use larder_e2e::tree::random_seed;
use larder_e2e::{
    Client, Nix, NixClient, PathInfo, Server, ServerOptions, StoreTree, Worker, nix_available, wait,
};
use sha2::{Digest, Sha256};

// More tests, by area (kept in one test binary: each links the whole graph).
#[path = "e2e/attic_import.rs"]
mod attic_import;
#[path = "e2e/build_logs.rs"]
mod build_logs;
#[path = "e2e/chunk_push.rs"]
mod chunk_push;
#[path = "e2e/cluster.rs"]
mod cluster;
#[path = "e2e/gc_closure.rs"]
mod gc_closure;
#[path = "e2e/key_rotation.rs"]
mod key_rotation;
#[path = "e2e/larder_use.rs"]
mod larder_use;
#[path = "e2e/nix_copy.rs"]
mod nix_copy;
#[path = "e2e/proxies.rs"]
mod proxies;
#[path = "e2e/push.rs"]
mod push;
#[path = "e2e/queue.rs"]
mod queue;
#[path = "e2e/revocation.rs"]
mod revocation;

/// Bound on a full ingest of a small closure.
const INGEST_LIMIT: Duration = Duration::from_secs(120);
/// Bound on recovery after a worker is killed (orphaned jobs are re-enqueued
/// after missed heartbeats, about 30 s).
const RECOVERY_LIMIT: Duration = Duration::from_secs(240);

/// Checks the narinfo of every path against `nix path-info`, and its NAR URL
/// and compression against the expected state.
async fn check_narinfos(
    client: &Client,
    cache: &str,
    infos: &[PathInfo],
    ingested: bool,
) -> anyhow::Result<()> {
    for info in infos {
        let ni = client.narinfo(cache, &info.path).await?;
        let ctx = || format!("narinfo of {}:\n{}", info.path, ni.text);
        anyhow::ensure!(
            ni.get("StorePath") == Some(info.path.as_str()),
            "StorePath; {}",
            ctx()
        );
        anyhow::ensure!(
            ni.get("NarHash") == Some(typed_nix_base32(&info.nar_hash)?.as_str()),
            "NarHash; {}",
            ctx()
        );
        anyhow::ensure!(
            ni.get("NarSize") == Some(info.nar_size.to_string().as_str()),
            "NarSize; {}",
            ctx()
        );
        let mut want: Vec<&str> = info.references.iter().map(|r| base_name(r)).collect();
        let mut got: Vec<&str> = ni
            .get("References")
            .unwrap_or("")
            .split_whitespace()
            .collect();
        want.sort_unstable();
        got.sort_unstable();
        anyhow::ensure!(want == got, "References; {}", ctx());
        anyhow::ensure!(ni.get("Sig").is_some(), "no Sig; {}", ctx());
        if ingested {
            anyhow::ensure!(
                ni.compression() == "zstd" && ni.url().ends_with(".nar.zst"),
                "not ingested; {}",
                ctx()
            );
            anyhow::ensure!(
                ni.get("FileSize").is_some(),
                "ingested without FileSize; {}",
                ctx()
            );
        } else {
            anyhow::ensure!(
                ni.compression() == "none" && ni.url().ends_with(".nar"),
                "not staged; {}",
                ctx()
            );
        }
    }
    Ok(())
}

/// Downloads every NAR as the narinfo's `URL` names it (and, once ingested,
/// also as the uncompressed `nar/<narhash>.nar`, which must keep working):
/// each response has a correct `Content-Length`, and the NAR hashes to the
/// path's `NarHash`.
async fn check_nar_downloads(
    client: &Client,
    cache: &str,
    infos: &[PathInfo],
    ingested: bool,
) -> anyhow::Result<()> {
    for info in infos {
        let ni = client.narinfo(cache, &info.path).await?;
        let want_hash = typed_base16(&info.nar_hash)?;
        let check_nar = |file: &str, d: &Download| -> anyhow::Result<()> {
            anyhow::ensure!(
                d.content_length == Some(d.body.len() as u64),
                "{file}: Content-Length {:?}, body {}",
                d.content_length,
                d.body.len()
            );
            anyhow::ensure!(
                d.body.len() as u64 == info.nar_size,
                "{file}: {} bytes, NarSize {}",
                d.body.len(),
                info.nar_size
            );
            let got = format!("sha256:{}", hex::encode(Sha256::digest(&d.body)));
            anyhow::ensure!(got == want_hash, "{file}: NAR hash {got}, want {want_hash}");
            Ok(())
        };
        let url = ni.url().to_owned();
        let d = client.download(cache, &url).await?;
        if ingested {
            let file_size: u64 = ni.get("FileSize").unwrap_or("").parse()?;
            anyhow::ensure!(
                d.content_length == Some(file_size) && d.body.len() as u64 == file_size,
                "{url}: Content-Length {:?}, body {}, FileSize {file_size}",
                d.content_length,
                d.body.len()
            );
            let plain = url.strip_suffix(".zst").unwrap_or(&url).to_owned();
            check_nar(&plain, &client.download(cache, &plain).await?)?;
        } else {
            check_nar(&url, &d)?;
        }
    }
    Ok(())
}

/// Checks that `other` (a cache without these paths) answers 404 for their
/// narinfos and for the NAR URLs `cache` serves: knowing a hash never reads
/// another cache's data (docs/protocol.md).
async fn check_isolated(
    client: &Client,
    cache: &str,
    other: &str,
    infos: &[PathInfo],
) -> anyhow::Result<()> {
    for info in infos {
        let url = client.narinfo(cache, &info.path).await?.url().to_owned();
        let plain = url.strip_suffix(".zst").unwrap_or(&url).to_owned();
        let narinfo = format!("{}.narinfo", larder_e2e::nix::hash_part(&info.path));
        for file in [narinfo, url, plain] {
            let status = client
                .request(reqwest::Method::GET, &format!("/{other}/{file}"))
                .send()
                .await?
                .status();
            anyhow::ensure!(
                status == reqwest::StatusCode::NOT_FOUND,
                "GET /{other}/{file} answered {status}, want 404 (it belongs to {cache} only)"
            );
        }
    }
    Ok(())
}

/// Polls until every narinfo of `infos` says `Compression: zstd`, failing
/// early if the worker dies.
async fn wait_ingested(
    client: &Client,
    cache: &str,
    infos: &[PathInfo],
    worker: &Worker,
    limit: Duration,
) -> anyhow::Result<()> {
    wait::until(
        "every narinfo to say Compression: zstd",
        limit,
        Duration::from_millis(250),
        || async {
            worker.ensure_running()?;
            for info in infos {
                if client.narinfo(cache, &info.path).await?.compression() != "zstd" {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .map_err(|e| e.context(worker.log()))
}

/// Files (chunks) under the storage's `chunks/` prefix, temporary files excluded.
fn count_chunks(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                count_chunks(&path)
            } else {
                usize::from(!e.file_name().to_string_lossy().starts_with('.'))
            }
        })
        .sum()
}

/// Checks that strangers cannot substitute `tops` from the private cache at
/// `cache_url` with `client`: neither without credentials nor with a token
/// for another cache (docs/protocol.md: the same 401 whether the cache or
/// path exists). Prints what `client` tells such a user.
async fn check_strangers_refused(
    client: &NixClient,
    cache_url: &str,
    public_key: &str,
    other_token: &str,
    tops: &[String],
) -> anyhow::Result<()> {
    let strangers = [
        ("no credentials", String::new()),
        (
            "a token for another cache",
            format!("machine 127.0.0.1\nlogin larder\npassword {other_token}\n"),
        ),
    ];
    for (who, netrc_text) in strangers {
        let stranger = Nix::with_client(client)?;
        let netrc = stranger.write_netrc_text(&netrc_text)?;
        let sub = Substituter {
            public_key,
            netrc: &netrc,
        };
        match stranger.copy_from(cache_url, &sub, tops).await {
            Ok(store) => anyhow::bail!(
                "{client}: a stranger with {who} substituted {tops:?} into {}",
                store.root().display()
            ),
            Err(e) => {
                let message = format!("{e:#}");
                let stderr = message
                    .split("stderr:")
                    .nth(1)
                    .and_then(|rest| rest.split("stdout:").next())
                    .unwrap_or(&message)
                    .trim();
                // Refused at `nix-cache-info`, not by some other failure:
                // 2.8 says the URL is no binary cache, 2.26 shows the 401.
                anyhow::ensure!(
                    stderr.contains("HTTP error 401")
                        || stderr.contains("does not appear to be a binary cache"),
                    "{client}: a stranger with {who} failed, but not for want of access:\n{message}"
                );
                eprintln!("{client}, stranger with {who}, refused:\n{stderr}");
            }
        }
    }
    Ok(())
}

/// One client's share of [`substitute_staged_then_ingested`]: its context
/// (whose store holds the tree), the tree's tops and closure.
struct ClientTree {
    nix: Nix,
    tops: Vec<String>,
    infos: Vec<PathInfo>,
    closure: Vec<String>,
}

/// Each client pushes a tree over the Attic API (from its own store) and
/// substitutes it while staged; strangers are refused; after ingest every
/// client substitutes every tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn substitute_staged_then_ingested() -> anyhow::Result<()> {
    let clients = NixClient::under_test("substitute_staged_then_ingested");
    if clients.is_empty() {
        return Ok(());
    }
    let server = Server::start_embedded(ServerOptions::without_workers()).await?;
    let client = server.client();
    let cache = "e2e-staged";
    client.create_cache(cache).await?;
    let public_key = client.public_key(cache).await?;
    let other = "e2e-other";
    client.create_cache(other).await?;
    let other_token = make_token(&server.config_path(), "stranger", &["--pull", other]).await?;
    let cache_url = format!("{}/{cache}", server.url());

    // Each client builds a tree in its own store and uploads it; strangers
    // are refused; the staged copy substitutes, signature checked by Nix.
    let mut trees = Vec::new();
    for nix_client in &clients {
        let nix = Nix::with_client(nix_client)?;
        let tops = StoreTree::binary_tree(random_seed(), 6).build(&nix).await?;
        let infos = client.upload_closure(&nix, cache, &tops).await?;
        let closure: Vec<String> = infos.iter().map(|i| i.path.clone()).collect();
        assert!(closure.len() >= 5, "closure too small: {closure:?}");
        assert!(
            infos.iter().any(|i| !i.references.is_empty()),
            "no references in {closure:?}"
        );
        check_narinfos(&client, cache, &infos, false).await?;
        check_nar_downloads(&client, cache, &infos, false).await?;
        check_isolated(&client, cache, other, &infos).await?;
        check_strangers_refused(nix_client, &cache_url, &public_key, &other_token, &tops).await?;

        let staged = Nix::with_client(nix_client)?;
        let netrc = staged.write_netrc("127.0.0.1", server.token())?;
        let sub = Substituter {
            public_key: &public_key,
            netrc: &netrc,
        };
        let store = staged
            .copy_from(&cache_url, &sub, &tops)
            .await
            .with_context(|| format!("{nix_client}, staged"))?;
        staged
            .verify(&store, &public_key, &closure)
            .await
            .with_context(|| format!("{nix_client}, staged"))?;
        trees.push(ClientTree {
            nix,
            tops,
            infos,
            closure,
        });
    }

    // Ingested by a separate worker process, then substituted again with a
    // fresh narinfo cache, this time as a substituter of `nix-store --realise`.
    let worker = Worker::start(&server)?;
    let all: Vec<PathInfo> = trees.iter().flat_map(|t| t.infos.clone()).collect();
    wait_ingested(&client, cache, &all, &worker, INGEST_LIMIT).await?;
    check_narinfos(&client, cache, &all, true).await?;
    check_nar_downloads(&client, cache, &all, true).await?;
    check_isolated(&client, cache, other, &all).await?;
    // Every client substitutes every client's tree: a mixed fleet (CI on
    // one Nix, laptops on another) shares a cache.
    for tree in &trees {
        let builder = tree.nix.client();
        check_strangers_refused(builder, &cache_url, &public_key, &other_token, &tree.tops).await?;
        for nix_client in &clients {
            let what = || format!("{nix_client} substituting what {builder} built, ingested");
            let ingested = Nix::with_client(nix_client)?;
            let netrc = ingested.write_netrc("127.0.0.1", server.token())?;
            let sub = Substituter {
                public_key: &public_key,
                netrc: &netrc,
            };
            let store = ingested
                .realise_from(&cache_url, &sub, &tree.tops)
                .await
                .with_context(what)?;
            ingested
                .verify_built_by(&store, &public_key, &tree.closure, builder)
                .await
                .with_context(what)?;
        }
    }
    for tree in &trees {
        tree.nix.delete(&tree.closure).await?;
    }
    Ok(())
}

/// A `[storage]` table for the S3 test server (scripts/test-all starts
/// SeaweedFS), in a fresh key prefix; `None` (skip) when it is not set.
fn s3_storage_section(test: &str) -> Option<String> {
    let Ok(endpoint) = std::env::var("LARDER_TEST_S3_ENDPOINT") else {
        eprintln!("{test}: LARDER_TEST_S3_ENDPOINT unset, skipping (scripts/test-all sets it)");
        return None;
    };
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    Some(format!(
        "[storage]\ntype = \"s3\"\nbucket = \"{}\"\nendpoint = \"{endpoint}\"\nprefix = \"e2e-{}\"\n\
         [storage.credentials]\naccess-key-id = \"{}\"\nsecret-access-key = \"{}\"\n",
        var("LARDER_TEST_S3_BUCKET"),
        random_seed(),
        var("LARDER_TEST_S3_ACCESS_KEY_ID"),
        var("LARDER_TEST_S3_SECRET_ACCESS_KEY"),
    ))
}

/// Chunks and staging in an S3 bucket (docs/operations.md "S3 storage"): uploads staged there, a
/// separate worker process ingests from and into it, and stock Nix pulls
/// the closure, signature-checked, from the chunks; nothing touches the
/// local storage directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn substitute_from_s3_storage() -> anyhow::Result<()> {
    if !nix_available("substitute_from_s3_storage") {
        return Ok(());
    }
    let Some(section) = s3_storage_section("substitute_from_s3_storage") else {
        return Ok(());
    };
    let mut server = Server::start_embedded(ServerOptions::without_workers()).await?;
    server.switch_storage(&section).await?;
    let client = server.client();
    let cache = "e2e-s3";
    client.create_cache(cache).await?;
    let public_key = client.public_key(cache).await?;

    let nix = Nix::new()?;
    let tops = StoreTree::binary_tree(random_seed(), 6).build(&nix).await?;
    let infos = client.upload_closure(&nix, cache, &tops).await?;
    let closure: Vec<String> = infos.iter().map(|i| i.path.clone()).collect();
    check_nar_downloads(&client, cache, &infos, false).await?;

    let worker = Worker::start(&server)?;
    wait_ingested(&client, cache, &infos, &worker, INGEST_LIMIT).await?;
    check_narinfos(&client, cache, &infos, true).await?;
    check_nar_downloads(&client, cache, &infos, true).await?;
    let fresh = Nix::new()?;
    let netrc = fresh.write_netrc("127.0.0.1", server.token())?;
    let sub = Substituter {
        public_key: &public_key,
        netrc: &netrc,
    };
    let store = fresh
        .copy_from(&format!("{}/{cache}", server.url()), &sub, &tops)
        .await?;
    fresh.verify(&store, &public_key, &closure).await?;
    assert_eq!(
        count_chunks(&server.storage_dir()),
        0,
        "objects in the local storage directory"
    );
    nix.delete(&closure).await?;
    Ok(())
}

/// Stock `nix copy --to http://…` onto a server whose chunks and staging
/// are in an S3 bucket: Nix's uploads are staged in the bucket, served from
/// there before ingest (substituted by a fresh Nix), ingested by a separate
/// worker into packs in the bucket, and substituted again from the chunks;
/// nothing touches the local storage directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_copy_to_s3_storage() -> anyhow::Result<()> {
    if !nix_available("nix_copy_to_s3_storage") {
        return Ok(());
    }
    let Some(section) = s3_storage_section("nix_copy_to_s3_storage") else {
        return Ok(());
    };
    let mut server = Server::start_embedded(ServerOptions::without_workers()).await?;
    server.switch_storage(&section).await?;
    let client = server.client();
    let cache = "e2e-s3-copy";
    client.create_cache(cache).await?;
    let public_key = client.public_key(cache).await?;
    let cache_url = format!("{}/{cache}", server.url());

    let nix = Nix::new()?;
    let tops = StoreTree::binary_tree(random_seed(), 4).build(&nix).await?;
    let closure = nix.closure(&tops).await?;
    let netrc = nix.write_netrc("127.0.0.1", server.token())?;
    nix.copy_to(&format!("{cache_url}?compression=zstd"), &netrc, &tops)
        .await
        .map_err(|e| e.context(server.log()))?;

    // Staged in the bucket: a fresh Nix substitutes the closure already.
    let substitute = || async {
        let fresh = Nix::new()?;
        let netrc = fresh.write_netrc("127.0.0.1", server.token())?;
        let sub = Substituter {
            public_key: &public_key,
            netrc: &netrc,
        };
        let store = fresh.copy_from(&cache_url, &sub, &tops).await?;
        fresh.verify(&store, &public_key, &closure).await?;
        anyhow::Ok(())
    };
    substitute().await.map_err(|e| e.context("staged"))?;

    let worker = Worker::start(&server)?;
    let infos = nix.path_info(&closure).await?;
    wait_ingested(&client, cache, &infos, &worker, INGEST_LIMIT).await?;
    check_nar_downloads(&client, cache, &infos, true).await?;
    substitute().await.map_err(|e| e.context("ingested"))?;
    assert_eq!(
        count_chunks(&server.storage_dir()),
        0,
        "objects in the local storage directory"
    );
    nix.delete(&closure).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_ingest_recovers() -> anyhow::Result<()> {
    if !nix_available("worker_killed_mid_ingest_recovers") {
        return Ok(());
    }
    let server = Server::start_embedded(ServerOptions::without_workers()).await?;
    let client = server.client();
    let cache = "e2e-crash";
    client.create_cache(cache).await?;
    let public_key = client.public_key(cache).await?;

    let nix = Nix::new()?;
    let tops = StoreTree::single(random_seed(), "larder-e2e-large", 64 * 1024 * 1024)
        .build(&nix)
        .await?;
    let infos = client.upload_closure(&nix, cache, &tops).await?;
    check_narinfos(&client, cache, &infos, false).await?;
    // Chunks go into packs of 32 MiB (the default): the first pack is
    // sealed, visible and durable about halfway through this 64 MiB NAR.
    let chunks_dir = server.storage_dir().join("packs");
    assert_eq!(count_chunks(&chunks_dir), 0, "packs before any worker ran");

    // Kill -9 as soon as the ingest has stored some, but not all, chunks.
    let first = Worker::start(&server)?;
    let seen = wait::until(
        "the ingest to seal its first pack",
        INGEST_LIMIT,
        Duration::from_millis(10),
        || async {
            first.ensure_running()?;
            Ok((count_chunks(&chunks_dir) > 0).then_some(()))
        },
    )
    .await;
    seen.map_err(|e| e.context(first.log()))?;
    first.kill_9()?;
    let after_kill = count_chunks(&chunks_dir);
    let ni = client.narinfo(cache, &tops[0]).await?;
    assert_eq!(
        ni.compression(),
        "none",
        "the ingest finished before the kill (make the path larger); {after_kill} packs:\n{}",
        ni.text
    );

    // The crash left the staged copy intact and served.
    check_nar_downloads(&client, cache, &infos, false).await?;
    let second = Worker::start(&server)?;
    wait_ingested(&client, cache, &infos, &second, RECOVERY_LIMIT).await?;
    check_narinfos(&client, cache, &infos, true).await?;
    check_nar_downloads(&client, cache, &infos, true).await?;
    eprintln!(
        "worker killed with {after_kill} packs stored; recovered with {} packs",
        count_chunks(&chunks_dir)
    );

    let fresh = Nix::new()?;
    let netrc = fresh.write_netrc("127.0.0.1", server.token())?;
    let sub = Substituter {
        public_key: &public_key,
        netrc: &netrc,
    };
    let store = fresh
        .copy_from(&format!("{}/{cache}", server.url()), &sub, &tops)
        .await?;
    fresh.verify(&store, &public_key, &tops).await?;
    nix.delete(&tops).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default_restart_reuses_state() -> anyhow::Result<()> {
    // No Nix needed: this one always runs.
    let mut server = Server::start_embedded(ServerOptions::default()).await?;
    let token = server.token().to_owned();
    assert!(!token.is_empty());
    let mode = std::fs::metadata(server.config_path())?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "config.toml mode {mode:o}");

    let cache = "e2e-restart";
    server.client().create_cache(cache).await?;
    let key_before = server.client().public_key(cache).await?;

    let second = server.restart().await?;
    assert!(
        second.token.is_none(),
        "second start printed a token:\n{}",
        second.stdout
    );
    assert!(
        !second.stdout.contains("larder login"),
        "second start printed a login line:\n{}",
        second.stdout
    );
    let mode = std::fs::metadata(server.config_path())?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "config.toml mode after restart {mode:o}");

    // The token went to stdout only, never through the log (stderr).
    for entry in std::fs::read_dir(server.log_dir())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "stderr") {
            let log = std::fs::read_to_string(&path)?;
            assert!(
                !log.contains(&token),
                "root token in the log {}",
                path.display()
            );
        }
    }

    // One process, API and in-process workers: /metrics shows the
    // workers' counters (their start-up sweep) beside the API's, each
    // family once.
    let metrics_url = format!("{}/metrics", server.url());
    let text = wait::until(
        "the in-process workers' sweep in /metrics",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let text = reqwest::get(&metrics_url).await?.text().await?;
            Ok(text
                .contains("larder_jobs_total{kind=\"sweep\",outcome=\"ok\"}")
                .then_some(text))
        },
    )
    .await?;
    let mut families: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let n = families.len();
    families.sort_unstable();
    families.dedup();
    assert_eq!(families.len(), n, "a family twice:\n{text}");
    for family in [
        "larder_storage_requests_total",
        "larder_uploads_total",
        "larder_packs",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family}:\n{text}"
        );
    }

    // Same state (cache and key), and the first start's token still works.
    let client = Client::new(&server.url(), &token);
    assert_eq!(client.public_key(cache).await?, key_before);
    let anonymous = reqwest::get(client.url(&format!("/_api/v1/cache-config/{cache}"))).await?;
    assert!(
        !anonymous.status().is_success(),
        "private cache config readable without a token: {}",
        anonymous.status()
    );
    Ok(())
}
