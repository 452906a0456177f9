//! Real networks and caching proxies (docs/operations.md "Behind a reverse proxy or CDN").
//!
//! - A loopback proxy cuts the first response for each NAR at half its
//!   length: stock Nix must resume every one with a `Range` request (it does
//!   so only after `Accept-Ranges: bytes`) and get a 206, for a staged and
//!   for an ingested closure of several multi-MB paths, signatures checked.
//! - Debian's nginx with `proxy_cache` and `proxy_cache_valid 200 10m` in
//!   front of Larder: a stranger gets nothing a member of a private cache
//!   fetched; a second pull of a public cache's NARs is served by nginx; a
//!   delete shows through nginx once the narinfo's max-age has passed.
//!
//! The resume test runs with every client of [`NixClient::under_test`]
//! (the host's Nix 2.8 and the newer 2.26 in a chroot).

use std::time::Duration;

use larder_e2e::fault_proxy::{Exchange, FaultProxy};
use larder_e2e::nginx::{Nginx, nginx_available};
use larder_e2e::nix::{Substituter, hash_part};
use larder_e2e::nix_client::NixClient;
use larder_e2e::tree::random_seed;
use larder_e2e::{Nix, Server, ServerOptions, StoreTree, Worker, nix_available, wait};

const MB: u64 = 1024 * 1024;

/// Every NAR response the proxy cut was followed by a 206 for a `Range` of
/// the same URL; returns how many were cut.
fn assert_all_resumed(seen: &[Exchange], want_cuts: usize) -> anyhow::Result<usize> {
    let cut: Vec<&Exchange> = seen.iter().filter(|e| e.cut).collect();
    anyhow::ensure!(
        cut.len() >= want_cuts,
        "only {} NAR downloads were cut (want {want_cuts}): {seen:#?}",
        cut.len()
    );
    for c in &cut {
        let resumed = seen.iter().any(|e| {
            e.path == c.path
                && e.status == 206
                && e.range.as_deref().is_some_and(|r| r.starts_with("bytes="))
        });
        anyhow::ensure!(
            resumed,
            "{} was cut and never resumed with a 206: {seen:#?}",
            c.path
        );
    }
    Ok(cut.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_resumes_cut_nar_downloads() -> anyhow::Result<()> {
    let clients = NixClient::under_test("nix_resumes_cut_nar_downloads");
    let Some(builder) = clients.first() else {
        return Ok(());
    };
    let server = Server::start_embedded(ServerOptions::without_workers()).await?;
    let client = server.client();
    let cache = "e2e-resume";
    client.create_cache(cache).await?;
    let public_key = client.public_key(cache).await?;
    let nix = Nix::with_client(builder)?;
    let tops = StoreTree::chain(
        random_seed(),
        "larder-e2e-resume",
        &[3 * MB, 5 * MB, 4 * MB],
    )
    .build(&nix)
    .await?;
    let infos = client.upload_closure(&nix, cache, &tops).await?;
    let closure: Vec<String> = infos.iter().map(|i| i.path.clone()).collect();
    assert_eq!(closure.len(), 3, "{closure:?}");

    for phase in ["staged", "ingested"] {
        if phase == "ingested" {
            let worker = Worker::start(&server)?;
            crate::wait_ingested(&client, cache, &infos, &worker, crate::INGEST_LIMIT).await?;
        }
        for nix_client in &clients {
            // A fresh proxy: it cuts each NAR's first response again.
            let proxy = FaultProxy::start(server.addr()).await?;
            let what = || {
                format!(
                    "{nix_client}, {phase}: {:#?}\n{}",
                    proxy.seen(),
                    server.log()
                )
            };
            let puller = Nix::with_client(nix_client)?;
            let netrc = puller.write_netrc("127.0.0.1", server.token())?;
            let sub = Substituter {
                public_key: &public_key,
                netrc: &netrc,
            };
            let store = puller
                .copy_from(&format!("{}/{cache}", proxy.url()), &sub, &tops)
                .await
                .map_err(|e| e.context(what()))?;
            puller
                .verify_built_by(&store, &public_key, &closure, builder)
                .await
                .map_err(|e| e.context(what()))?;
            let seen = proxy.seen();
            let cuts = assert_all_resumed(&seen, closure.len()).map_err(|e| e.context(what()))?;
            let suffix = if phase == "staged" {
                ".nar"
            } else {
                ".nar.zst"
            };
            anyhow::ensure!(
                seen.iter()
                    .filter(|e| e.cut)
                    .all(|e| e.path.ends_with(suffix)),
                "{nix_client}, {phase}: unexpected NAR URLs {seen:#?}"
            );
            eprintln!("{nix_client}, {phase}: {cuts} cut NAR downloads, all resumed with 206");
        }
    }
    nix.delete(&closure).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_proxy_cache_keeps_private_caches_private() -> anyhow::Result<()> {
    if !nix_available("nginx_proxy_cache") || !nginx_available("nginx_proxy_cache") {
        return Ok(());
    }
    let max_age = 2;
    let server = Server::start_embedded(ServerOptions {
        embedded_workers: None,
        narinfo_max_age: Some(max_age),
        ..ServerOptions::default()
    })
    .await?;
    let client = server.client();
    let (private, public) = ("e2e-nginx-private", "e2e-nginx-public");
    client.create_cache(private).await?;
    client.create_cache(public).await?;
    let resp = client
        .request(
            reqwest::Method::PATCH,
            &format!("/_api/v1/cache-config/{public}"),
        )
        .json(&serde_json::json!({"is_public": true}))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "making {public} public: {}",
        resp.status()
    );
    let nix = Nix::new()?;
    let tops = StoreTree::chain(random_seed(), "larder-e2e-nginx", &[MB, 2 * MB])
        .build(&nix)
        .await?;
    let mut infos = Vec::new();
    for cache in [private, public] {
        infos = client.upload_closure(&nix, cache, &tops).await?;
    }
    let closure: Vec<String> = infos.iter().map(|i| i.path.clone()).collect();
    let worker_free = wait::until(
        "the embedded workers to ingest",
        crate::INGEST_LIMIT,
        Duration::from_millis(250),
        || async {
            for cache in [private, public] {
                for info in &infos {
                    if client.narinfo(cache, &info.path).await?.compression() != "zstd" {
                        return Ok(None);
                    }
                }
            }
            Ok(Some(()))
        },
    );
    worker_free.await?;
    let nginx = Nginx::start(server.addr()).await?;
    let http = reqwest::Client::new();
    let get = |url: String, token: Option<&str>| {
        let mut req = http.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };

    // 1. A member pulls the private cache through nginx, twice; then a
    //    stranger asks for every URL the member fetched.
    let public_key = client.public_key(private).await?;
    for _ in 0..2 {
        let member = Nix::new()?;
        let netrc = member.write_netrc("127.0.0.1", server.token())?;
        let sub = Substituter {
            public_key: &public_key,
            netrc: &netrc,
        };
        let store = member
            .copy_from(&format!("{}/{private}", nginx.url()), &sub, &tops)
            .await
            .map_err(|e| e.context(nginx.logs()))?;
        member.verify(&store, &public_key, &closure).await?;
    }
    let fetched: Vec<String> = nginx
        .accesses()
        .into_iter()
        .filter(|a| a.uri.starts_with(&format!("/{private}/")) && a.status == 200)
        .map(|a| a.uri)
        .collect();
    anyhow::ensure!(
        fetched.iter().any(|u| u.contains("/nar/"))
            && fetched.iter().any(|u| u.ends_with(".narinfo")),
        "the member fetched no NAR or narinfo through nginx: {:?}",
        nginx.accesses()
    );
    for uri in &fetched {
        let resp = get(format!("{}{uri}", nginx.url()), None).await?;
        let status = resp.status().as_u16();
        let cache_status = resp
            .headers()
            .get("x-cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        anyhow::ensure!(
            status == 401 && cache_status != "HIT",
            "a stranger got {status} ({cache_status}) for {uri}, which a member fetched"
        );
    }
    anyhow::ensure!(
        nginx
            .accesses()
            .iter()
            .all(|a| !(a.uri.starts_with(&format!("/{private}/")) && a.cache == "HIT")),
        "nginx served a private cache's response from its cache: {:?}",
        nginx.accesses()
    );

    // 2. Two pulls of the public cache: the second one's NARs come from nginx.
    let public_key = client.public_key(public).await?;
    for round in 0..2 {
        let before = nginx.accesses().len();
        let anyone = Nix::new()?;
        let netrc = anyone.write_netrc("no-such-host.invalid", "none")?;
        let sub = Substituter {
            public_key: &public_key,
            netrc: &netrc,
        };
        let store = anyone
            .copy_from(&format!("{}/{public}", nginx.url()), &sub, &tops)
            .await
            .map_err(|e| e.context(nginx.logs()))?;
        anyone.verify(&store, &public_key, &closure).await?;
        let nars: Vec<_> = nginx.accesses()[before..]
            .iter()
            .filter(|a| a.uri.contains("/nar/"))
            .cloned()
            .collect();
        anyhow::ensure!(
            nars.len() == closure.len(),
            "round {round}: NAR fetches {nars:?}"
        );
        if round == 1 {
            anyhow::ensure!(
                nars.iter().all(|a| a.cache == "HIT"),
                "the second pull's NARs were not served by nginx: {nars:?}"
            );
        }
    }

    // 3. A delete shows through nginx once the narinfo's max-age passed
    //    (without Cache-Control, `proxy_cache_valid 200 10m` would keep it).
    let victim = &closure[closure.len() - 1];
    let narinfo_url = format!("{}/{public}/{}.narinfo", nginx.url(), hash_part(victim));
    let first = get(narinfo_url.clone(), None).await?;
    anyhow::ensure!(first.status() == 200);
    let again = get(narinfo_url.clone(), None).await?;
    anyhow::ensure!(
        again
            .headers()
            .get("x-cache-status")
            .is_some_and(|v| v == "HIT"),
        "a public narinfo is cached by nginx: {:?}",
        again.headers()
    );
    let resp = client
        .request(
            reqwest::Method::DELETE,
            &format!("/{public}/{}.narinfo", hash_part(victim)),
        )
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 204, "delete: {}", resp.status());
    wait::until(
        "the deleted path's narinfo to be gone through nginx",
        Duration::from_secs(30 + max_age),
        Duration::from_millis(250),
        || async { Ok((get(narinfo_url.clone(), None).await?.status() == 404).then_some(())) },
    )
    .await?;
    // A push shows through nginx as soon as it is made (a 404 is not stored).
    client.upload_closure(&nix, public, &tops).await?;
    wait::until(
        "the re-pushed path's narinfo through nginx",
        Duration::from_secs(30 + max_age),
        Duration::from_millis(250),
        || async { Ok((get(narinfo_url.clone(), None).await?.status() == 200).then_some(())) },
    )
    .await?;
    nix.delete(&closure).await?;
    Ok(())
}
