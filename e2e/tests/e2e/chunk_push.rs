//! Chunk-level push with real Nix (docs/protocol.md "Chunk-level push"):
//! real store paths pushed by `larder push`, a dependency updated and the
//! closure rebuilt, pushed again by another CI identity, with the bytes on
//! the wire counted by a forwarder between client and server; then
//! everything pulled back by real Nix with signatures checked. And the
//! fallback to whole NARs against a server without chunk push, the
//! fallbacks on the `409`s a chunk-level push can meet, and a push spread
//! over two API replicas by a round-robin balancer.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::Context as _;
use larder_e2e::cli::{CliOutput, make_token};
use larder_e2e::fault_proxy::{Exchange, FaultProxy, NarRequest, Rule, STREAMED};
use larder_e2e::nix::Substituter;
use larder_e2e::replica::PgDatabase;
use larder_e2e::tcp_forward::TcpForwarder;
use larder_e2e::tree::random_seed;
use larder_e2e::{Client, LarderCli, Nix, PushSummary, Server, ServerOptions, nix_available, wait};

use crate::revocation::TwoReplicas;

/// Bytes of each library's data file.
const DATA: usize = 2 << 20;
/// Libraries in the chain (each depends on the previous one).
const LIBS: usize = 4;

/// Builds the chain `lib0 ← lib1 ← … ← lib3` at `version` (only lib0's
/// own content depends on it; the others change through their
/// dependency's store path) and returns the top.
async fn build_chain(nix: &Nix, seed: u64, version: u32) -> anyhow::Result<Vec<String>> {
    let mut expr = String::from("let\n");
    for i in 0..LIBS {
        let blob = format!("blob-{seed:x}-{i}");
        let path = nix.dir().join(&blob);
        if !path.exists() {
            std::fs::write(&path, pseudo_random(seed + i as u64, DATA))?;
        }
        let dep = if i == 0 {
            format!("version {version}")
        } else {
            format!("${{lib{}}}", i - 1)
        };
        expr.push_str(&format!(
            "  lib{i} = derivation {{ name = \"chunks-{seed:x}-lib{i}\"; system = \"x86_64-linux\"; \
             builder = \"/bin/sh\"; PATH = \"/usr/bin:/bin\"; \
             args = [ \"-c\" \"mkdir $out; cat ${{./{blob}}} > $out/data; echo {dep} > $out/dep\" ]; }};\n"
        ));
    }
    expr.push_str(&format!("in lib{}\n", LIBS - 1));
    let file = nix.dir().join(format!("chain-{seed:x}-v{version}.nix"));
    std::fs::write(&file, expr)?;
    nix.build(&file).await
}

/// Deterministic bytes (SplitMix64), so both versions share their data.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What the forwarder relayed to the server once the client's connections
/// are closed.
async fn bytes_sent(forward: &TcpForwarder) -> anyhow::Result<u64> {
    wait::until(
        "the client's connections to close",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || async { Ok(forward.sent()) },
    )
    .await
}

fn summary(out: &CliOutput) -> anyhow::Result<PushSummary> {
    out.push_summary()
}

/// Polls until every path's narinfo says `Compression: zstd`.
async fn wait_ingested(server: &Server, cache: &str, paths: &[String]) -> anyhow::Result<()> {
    let client = server.client();
    wait::until(
        "every narinfo to say Compression: zstd",
        Duration::from_secs(300),
        Duration::from_millis(250),
        || async {
            for p in paths {
                if client.narinfo(cache, p).await?.compression() != "zstd" {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
}

/// Pulls `tops` back into a fresh store with signature checking and
/// verifies `closure` there.
async fn pull_and_verify(
    server: &Server,
    cache: &str,
    tops: &[String],
    closure: &[String],
) -> anyhow::Result<()> {
    let public_key = server.client().public_key(cache).await?;
    pull_and_verify_at(
        &server.url(),
        server.token(),
        &public_key,
        cache,
        tops,
        closure,
    )
    .await
}

/// [`pull_and_verify`] from the server at `url`.
async fn pull_and_verify_at(
    url: &str,
    token: &str,
    public_key: &str,
    cache: &str,
    tops: &[String],
    closure: &[String],
) -> anyhow::Result<()> {
    let fresh = Nix::new()?;
    let netrc = fresh.write_netrc("127.0.0.1", token)?;
    let sub = Substituter {
        public_key,
        netrc: &netrc,
    };
    let store = fresh
        .copy_from(&format!("{url}/{cache}"), &sub, tops)
        .await?;
    fresh.verify(&store, public_key, closure).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_push_sends_only_new_chunks() -> anyhow::Result<()> {
    if !nix_available("chunk_push_sends_only_new_chunks") {
        return Ok(());
    }
    let server = Server::start_embedded(ServerOptions::default()).await?;
    let cache = "e2e-chunks";
    server.client().create_cache(cache).await?;
    let forward = TcpForwarder::start(IpAddr::V4(Ipv4Addr::LOCALHOST), server.addr()).await?;
    let endpoint = format!("http://{}", forward.addr());
    let target = format!("e2e:{cache}");
    let grants = ["--pull", cache, "--push", cache];

    let nix = Nix::new()?;
    let seed = random_seed();
    let v1 = build_chain(&nix, seed, 1).await?;
    let closure1 = nix.closure(&v1).await?;
    let first = LarderCli::new()?;
    let token = make_token(&server.config_path(), "ci-first", &grants).await?;
    first.login("e2e", &endpoint, &token).await?;
    let out = first.push(&target, &v1).await?;
    anyhow::ensure!(summary(&out)?.pushed == closure1.len(), "{out}");
    let sent1 = bytes_sent(&forward).await?;
    let nar1: u64 = nix
        .path_info(&closure1)
        .await?
        .iter()
        .map(|i| i.nar_size)
        .sum();
    anyhow::ensure!(
        sent1 >= nar1 / 2,
        "random data cannot shrink: {sent1} of {nar1}"
    );
    wait_ingested(&server, cache, &closure1).await?;

    // The update, pushed by another CI identity (no batches of its own):
    // what it need not send comes from the cache's earlier versions.
    let v2 = build_chain(&nix, seed, 2).await?;
    let closure2 = nix.closure(&v2).await?;
    let new: Vec<String> = closure2
        .iter()
        .filter(|p| !closure1.contains(p))
        .cloned()
        .collect();
    anyhow::ensure!(new.len() == LIBS, "every library changed: {new:?}");
    let nar2: u64 = nix.path_info(&new).await?.iter().map(|i| i.nar_size).sum();
    let second = LarderCli::new()?;
    let token = make_token(&server.config_path(), "ci-second", &grants).await?;
    second.login("e2e", &endpoint, &token).await?;
    let out = second.push(&target, &v2).await?;
    anyhow::ensure!(summary(&out)?.pushed == new.len(), "{out}");
    let sent2 = bytes_sent(&forward).await? - sent1;
    // One changed chunk per NAR (≤ 256 KiB each) plus requests.
    anyhow::ensure!(
        sent2 < nar2 / 4,
        "the update sent {sent2} bytes for {nar2} bytes of NAR\n{out}"
    );
    anyhow::ensure!(out.stdout.contains(" deduplicated)"), "{out}");
    eprintln!(
        "chunk push on the wire: original {sent1} bytes for {nar1} bytes of NAR, \
         update {sent2} bytes for {nar2} bytes of new NARs"
    );

    pull_and_verify(&server, cache, &v2, &closure2).await?;
    pull_and_verify(&server, cache, &v1, &closure1).await?;
    let mut all = closure2;
    all.extend(closure1);
    all.sort();
    all.dedup();
    nix.delete(&all).await.ok();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_falls_back_to_whole_nars() -> anyhow::Result<()> {
    if !nix_available("push_falls_back_to_whole_nars") {
        return Ok(());
    }
    let server = Server::start_embedded(ServerOptions {
        no_chunk_push: true,
        ..ServerOptions::default()
    })
    .await?;
    let cache = "e2e-whole";
    server.client().create_cache(cache).await?;
    let nix = Nix::new()?;
    let seed = random_seed();
    let tops = build_chain(&nix, seed, 1).await?;
    let closure = nix.closure(&tops).await?;
    let cli = LarderCli::new()?;
    cli.login("e2e", &server.url(), server.token()).await?;
    let target = format!("e2e:{cache}");
    let out = cli.push(&target, &tops).await?;
    anyhow::ensure!(summary(&out)?.pushed == closure.len(), "{out}");
    anyhow::ensure!(out.stdout.contains(", 0 B deduplicated)"), "{out}");
    pull_and_verify(&server, cache, &tops, &closure).await?;
    nix.delete(&closure).await.ok();
    Ok(())
}

/// The answers a chunk-level push falls back on (docs/protocol.md
/// "Chunk-level push"), each said once by a proxy in front of the server,
/// worded as the server words them (api/src/error.rs): the first streamed
/// prepare is refused as a proxy refusing a body without a length would
/// (`411`), the first publish finds its prepared NAR gone, the first
/// prepare naming chunk lists (the refused one's, sent whole) finds them
/// forgotten, and the first one-step commit finds its chunks dropped (all
/// of them, as after the grace period). Each rule matches one kind of
/// request only, so which path meets which rule cannot change the story.
fn conflicts() -> Vec<Rule> {
    vec![
        Rule {
            matches: |nar| nar.mode == STREAMED,
            status: 411,
            kind: "LengthRequired",
            message: |_| "a request body needs a Content-Length here".to_owned(),
        },
        Rule {
            matches: |nar| nar.mode == "publish",
            status: 409,
            kind: "PreparedMissing",
            message: |_| {
                "the prepared NAR is gone or was never prepared here; commit the NAR in one step"
                    .to_owned()
            },
        },
        Rule {
            matches: |nar| nar.mode == "prepare" && !nar.chunk_lists.is_empty(),
            status: 409,
            kind: "ChunkListUnknown",
            message: |nar| {
                let id = nar.chunk_lists.first().map_or("", String::as_str);
                format!("chunk list {id} is not known here; list the NAR's chunks")
            },
        },
        Rule {
            matches: |nar| nar.mode == "commit",
            status: 409,
            kind: "ChunksMissing",
            message: |nar| {
                let first = nar.chunks.first().map_or("", String::as_str);
                format!(
                    "{} chunks of the NAR were not sent (first: {first}); send them, then commit",
                    nar.chunks.len()
                )
            },
        },
    ]
}

/// The exchange the proxy answered with `kind`, its index and its commit.
fn injected<'a>(seen: &'a [Exchange], kind: &str) -> anyhow::Result<(usize, &'a NarRequest)> {
    let (at, exchange) = seen
        .iter()
        .enumerate()
        .find(|(_, e)| e.injected.as_deref() == Some(kind))
        .with_context(|| format!("no {kind} answered"))?;
    let nar = exchange.nar.as_ref().context("an answer to no commit")?;
    Ok((at, nar))
}

/// Checks in the proxy's record that the client took each fallback.
fn check_fallbacks(seen: &[Exchange]) -> anyhow::Result<()> {
    let commits_after = |at: usize| {
        seen[at + 1..]
            .iter()
            .filter_map(|e| e.nar.as_ref().map(|nar| (e, nar)))
    };

    // A refused streamed prepare: prepared again with its whole list.
    // (That the rest of the run then stops streaming is a race with the
    // paths already started: `commit::tests` in the client checks it.)
    let (at, _) = injected(seen, "LengthRequired")?;
    anyhow::ensure!(
        seen[at + 1..]
            .iter()
            .any(|e| e.status == 200 && e.nar.as_ref().is_some_and(|n| n.mode == "prepare")),
        "no prepare with its whole list after 411"
    );

    // A publish without its prepared NAR: the NAR is committed in one step.
    let (at, publish) = injected(seen, "PreparedMissing")?;
    anyhow::ensure!(publish.mode == "publish", "{publish:?}");
    anyhow::ensure!(
        commits_after(at).any(|(_, n)| n.mode == "commit" && n.store_path == publish.store_path),
        "no one-step commit of {} after PreparedMissing",
        publish.store_path
    );

    // Forgotten lists: the same request again, listing the same chunks.
    let (at, named) = injected(seen, "ChunkListUnknown")?;
    anyhow::ensure!(!named.chunks.is_empty(), "unresolved lists: {named:?}");
    anyhow::ensure!(
        commits_after(at).any(|(e, n)| e.status == 200
            && n.chunk_lists.is_empty()
            && (&n.mode, &n.store_path, &n.chunks)
                == (&named.mode, &named.store_path, &named.chunks)),
        "{named:?} not sent again listing its chunks after ChunkListUnknown"
    );

    // Dropped chunks: the whole NAR, by Attic's upload-path, the only one.
    let (at, commit) = injected(seen, "ChunksMissing")?;
    anyhow::ensure!(
        commit.mode == "commit" && !commit.chunks.is_empty(),
        "{commit:?}"
    );
    let is_upload = |e: &&Exchange| e.method == "PUT" && e.path.starts_with("/_api/v1/upload-path");
    anyhow::ensure!(
        seen[at + 1..]
            .iter()
            .filter(is_upload)
            .any(|e| e.status == 200),
        "no whole-NAR upload after ChunksMissing"
    );
    anyhow::ensure!(
        seen.iter().filter(is_upload).count() == 1,
        "whole-NAR uploads besides the fallback"
    );
    Ok(())
}

/// A chunk-level push through every fallback at once (a streamed prepare
/// is refused; the prepare's chunk lists are forgotten; a NAR loses its
/// prepared copy, then its chunks) still pushes the whole closure, which
/// pulls back signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_push_falls_back_on_conflicts() -> anyhow::Result<()> {
    if !nix_available("chunk_push_falls_back_on_conflicts") {
        return Ok(());
    }
    let server = Server::start_embedded(ServerOptions::default()).await?;
    let cache = "e2e-conflicts";
    server.client().create_cache(cache).await?;
    let proxy = FaultProxy::injecting(server.addr(), conflicts()).await?;
    let nix = Nix::new()?;
    let tops = build_chain(&nix, random_seed(), 1).await?;
    let closure = nix.closure(&tops).await?;
    let cli = LarderCli::new()?;
    cli.login("e2e", &proxy.url(), server.token()).await?;
    let target = format!("e2e:{cache}");
    let out = cli
        .push(&target, &tops)
        .await
        .map_err(|e| e.context(format!("{:#?}\n{}", proxy.seen(), server.log())))?;
    let seen = proxy.seen();
    let what = || format!("{out}\n{seen:#?}");
    anyhow::ensure!(summary(&out)?.pushed == closure.len(), "{}", what());
    check_fallbacks(&seen).map_err(|e| e.context(what()))?;
    pull_and_verify(&server, cache, &tops, &closure).await?;
    nix.delete(&closure).await.ok();
    Ok(())
}

/// Behind a balancer that spreads one client's connections over two API
/// replicas (PostgreSQL and storage shared, each remembering only the
/// chunk lists it was asked about), a chain and its update push by chunks
/// and pull back signed from either replica: a question and the prepare
/// naming its list may reach different replicas (`409 ChunkListUnknown`),
/// and `larder push` recovers by listing the chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_push_through_round_robin_replicas() -> anyhow::Result<()> {
    if !nix_available("chunk_push_through_round_robin_replicas") {
        return Ok(());
    }
    let db = PgDatabase::create("larder_e2e_round_robin").await?;
    let result = run_round_robin(&db).await;
    db.drop_now().await?;
    result
}

async fn run_round_robin(db: &PgDatabase) -> anyhow::Result<()> {
    let TwoReplicas {
        dir: _dir,
        config,
        a,
        b,
    } = TwoReplicas::start(db).await?;
    let cache = "rr-chunks";
    let token = make_token(
        &config,
        "e2e-round-robin",
        &["--pull", cache, "--push", cache, "--create-cache", cache],
    )
    .await?;
    Client::new(&a.url(), &token).create_cache(cache).await?;
    let public_key = Client::new(&b.url(), &token).public_key(cache).await?;
    let balancer =
        TcpForwarder::round_robin(IpAddr::V4(Ipv4Addr::LOCALHOST), vec![a.addr(), b.addr()])
            .await?;
    let user = LarderCli::new()?;
    user.login("rr", &format!("http://{}", balancer.addr()), &token)
        .await?;
    let target = format!("rr:{cache}");

    let nix = Nix::new()?;
    let seed = random_seed();
    let mut all = Vec::new();
    for version in [1, 2] {
        let tops = build_chain(&nix, seed, version).await?;
        let closure = nix.closure(&tops).await?;
        let out = user
            .push(&target, &tops)
            .await
            .map_err(|e| e.context(format!("{}\n{}", a.log(), b.log())))?;
        let pushed = summary(&out)?.pushed;
        anyhow::ensure!(pushed > 0 && pushed <= closure.len(), "{out}");
        for url in [a.url(), b.url()] {
            pull_and_verify_at(&url, &token, &public_key, cache, &tops, &closure)
                .await
                .with_context(|| format!("version {version} from {url}"))?;
        }
        all.extend(closure);
    }
    // Every other connection went to each replica.
    let connections = balancer.connections();
    anyhow::ensure!(connections >= 2, "one connection reached one replica only");
    eprintln!("round robin over two replicas: {connections} connections");
    all.sort();
    all.dedup();
    nix.delete(&all).await.ok();
    Ok(())
}
