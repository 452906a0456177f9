//! Closure-aware retention against real Nix (docs/gc.md "Closures"): dependencies
//! pushed at t0, a root referring to them pushed alone at t0 + 50 s, a GC at
//! t0 + 70 s with a 60 s retention. The root's upload refreshes only its
//! direct reference; the deeper dependencies are idle and stay only because
//! a live path needs them, so a fresh host's `nix-store --realise` of the
//! root from the cache succeeds. (Real time: about 75 s.)

use std::time::Duration;

use larder_e2e::cli::{self, make_token};
use larder_e2e::nix::Substituter;
use larder_e2e::tree::random_seed;
use larder_e2e::{LarderCli, Nix, Server, ServerOptions, StoreTree, nix_available};

/// The retention.
const RETENTION: &str = "60";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_the_closure_of_a_live_root() -> anyhow::Result<()> {
    if !nix_available("gc_keeps_the_closure_of_a_live_root") {
        return Ok(());
    }
    let server = Server::start_embedded(ServerOptions::default()).await?;
    let cache = "e2e-gc-closure";
    let config = server.config_path();
    let operator = LarderCli::new()?;
    operator
        .login("root", &server.url(), server.token())
        .await?;
    let target = format!("root:{cache}");
    operator.ok(&["cache", "create", &target]).await?;
    operator
        .ok(&[
            "cache",
            "configure",
            &target,
            "--retention-period",
            RETENTION,
        ])
        .await?;
    let public_key = server.client().public_key(cache).await?;

    let nix = Nix::new()?;
    let tree = StoreTree::chain(random_seed(), "larder-e2e-gc", &[1000, 70_000, 3000, 4000]);
    let tops = tree.build(&nix).await?;
    let closure = nix.closure(&tops).await?;
    assert_eq!(closure.len(), 4, "{closure:?}");
    let root = tops[0].clone();
    let info = nix.path_info(std::slice::from_ref(&root)).await?;
    let direct: Vec<String> = info[0]
        .references
        .iter()
        .filter(|r| **r != root)
        .cloned()
        .collect();
    assert_eq!(direct.len(), 1, "a chain: {direct:?}");

    // t0: the dependencies (the closure of the root's one reference).
    operator.push(&target, &direct).await?;
    tokio::time::sleep(Duration::from_secs(50)).await;
    // t0 + 50 s: the root alone, as a CI push of a new root finds the rest.
    operator
        .ok(&["push", "--no-closure", &target, &root])
        .await?;
    tokio::time::sleep(Duration::from_secs(20)).await;

    // t0 + 70 s: the dependencies two and three levels down are idle, yet
    // kept; nothing expires.
    let dry: serde_json::Value =
        serde_json::from_str(&cli::admin(&config, &["gc", "--dry-run", "--json"]).await?)?;
    let ours = dry
        .as_array()
        .and_then(|a| a.iter().find(|c| c["cache"] == cache))
        .ok_or_else(|| anyhow::anyhow!("{cache} not in the dry run: {dry}"))?;
    assert_eq!(ours["expiring"], serde_json::json!([]), "{ours}");
    assert!(
        ours["idle_kept_by_referrers"].as_u64() >= Some(2),
        "the deeper dependencies are idle: {ours}"
    );
    // The embedded workers may be running their own first GC: retry briefly.
    let mut ran = false;
    for _ in 0..10 {
        if cli::admin(&config, &["gc"]).await.is_ok() {
            ran = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(ran, "larder-admin gc never got the lease");

    // A fresh host realises the live root from the cache alone.
    let pull = make_token(&config, "host", &["--pull", cache]).await?;
    let fresh = Nix::new()?;
    let netrc = fresh.write_netrc("127.0.0.1", &pull)?;
    let sub = Substituter {
        public_key: &public_key,
        netrc: &netrc,
    };
    let store = fresh
        .realise_from(&format!("{}/{cache}", server.url()), &sub, &[root])
        .await?;
    fresh.verify(&store, &public_key, &closure).await
}
