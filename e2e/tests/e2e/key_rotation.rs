//! Key rotation with overlap (docs/operations.md "Rotating
//! a cache's key"), with real Nix 2.8 and 2.26 pulling and checking
//! signatures: during the overlap a host that trusts only the old key and
//! one that trusts only the new key both substitute; after a rotation with
//! `no_overlap` (a compromised key) only the newest key works.

use anyhow::Context as _;
use serde_json::json;

use larder_e2e::nix::Substituter;
use larder_e2e::tree::random_seed;
use larder_e2e::{Client, Nix, NixClient, Server, ServerOptions, StoreTree};

/// `PATCH /_api/v1/cache-config/<cache>` with `body`; must succeed.
async fn configure(client: &Client, cache: &str, body: serde_json::Value) -> anyhow::Result<()> {
    let resp = client
        .request(
            reqwest::Method::PATCH,
            &format!("/_api/v1/cache-config/{cache}"),
        )
        .json(&body)
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await?;
    anyhow::ensure!(status.is_success(), "PATCH {body}: {status} {text}");
    Ok(())
}

/// Every active public key (`public_keys`), newest first.
async fn public_keys(client: &Client, cache: &str) -> anyhow::Result<Vec<String>> {
    let resp = client
        .request(
            reqwest::Method::GET,
            &format!("/_api/v1/cache-config/{cache}"),
        )
        .send()
        .await?;
    let v: serde_json::Value = resp.json().await?;
    let keys = v["public_keys"]
        .as_array()
        .with_context(|| format!("no public_keys in {v}"))?
        .iter()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    Ok(keys)
}

/// What was pushed: the tops, their closure, and the client that built it.
struct Pushed<'a> {
    tops: &'a [String],
    closure: &'a [String],
    builder: &'a NixClient,
}

/// Pulls the pushed tree with `trusted` as the only trusted key, each time
/// in a fresh Nix context (own store and narinfo cache), and checks every
/// path's signature and contents; `realise` picks `nix-store --realise`
/// over `nix copy --from`.
async fn pull(
    nix_client: &NixClient,
    server: &Server,
    cache_url: &str,
    trusted: &str,
    pushed: &Pushed<'_>,
    realise: bool,
) -> anyhow::Result<()> {
    let tops = pushed.tops;
    let nix = Nix::with_client(nix_client)?;
    let netrc = nix.write_netrc("127.0.0.1", server.token())?;
    let sub = Substituter {
        public_key: trusted,
        netrc: &netrc,
    };
    let store = if realise {
        nix.realise_from(cache_url, &sub, tops).await?
    } else {
        nix.copy_from(cache_url, &sub, tops).await?
    };
    nix.verify_built_by(&store, trusted, pushed.closure, pushed.builder)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_overlap_then_no_overlap() -> anyhow::Result<()> {
    let clients = NixClient::under_test("rotation_overlap_then_no_overlap");
    if clients.is_empty() {
        return Ok(());
    }
    let server = Server::start_embedded(ServerOptions::without_workers()).await?;
    let client = server.client();
    let cache = "e2e-rotate";
    client.create_cache(cache).await?;
    let cache_url = format!("{}/{cache}", server.url());
    let builder = Nix::with_client(&clients[0])?;
    let tops = StoreTree::binary_tree(random_seed(), 4)
        .build(&builder)
        .await?;
    let infos = client.upload_closure(&builder, cache, &tops).await?;
    let closure: Vec<String> = infos.iter().map(|i| i.path.clone()).collect();
    let old = client.public_key(cache).await?;
    let pushed = Pushed {
        tops: &tops,
        closure: &closure,
        builder: &clients[0],
    };

    configure(&client, cache, json!({"keypair": "Generate"})).await?;
    let keys = public_keys(&client, cache).await?;
    anyhow::ensure!(keys.len() == 2 && keys[1] == old, "two keys: {keys:?}");
    let new = keys[0].clone();
    anyhow::ensure!(
        new.starts_with(&format!("{cache}-2:")),
        "new key name: {new}"
    );
    for nix_client in &clients {
        for (which, key) in [("old", &old), ("new", &new)] {
            for realise in [false, true] {
                pull(nix_client, &server, &cache_url, key, &pushed, realise)
                    .await
                    .with_context(|| {
                        format!(
                            "{nix_client}, overlap, only the {which} key trusted, realise={realise}"
                        )
                    })?;
            }
        }
    }

    // A compromised key: only the newest key signs from now on.
    configure(
        &client,
        cache,
        json!({"keypair": "Generate", "no_overlap": true}),
    )
    .await?;
    let keys = public_keys(&client, cache).await?;
    anyhow::ensure!(keys.len() == 1, "one key after no_overlap: {keys:?}");
    let newest = keys[0].clone();
    anyhow::ensure!(newest.starts_with(&format!("{cache}-3:")), "{newest}");
    for nix_client in &clients {
        for stale in [&old, &new] {
            match pull(nix_client, &server, &cache_url, stale, &pushed, false).await {
                Ok(()) => {
                    anyhow::bail!("{nix_client}: pulled with a retired key trusted ({stale})")
                }
                // Nix refuses the paths for want of a trusted signature.
                Err(e) => {
                    let message = format!("{e:#}");
                    anyhow::ensure!(
                        message.contains("signature"),
                        "{nix_client}: failed for another reason than the signature: {message}"
                    );
                    eprintln!("{nix_client}, retired key only: refused as expected");
                }
            }
        }
        pull(nix_client, &server, &cache_url, &newest, &pushed, true)
            .await
            .with_context(|| format!("{nix_client}, after no_overlap, the newest key"))?;
    }
    builder.delete(&closure).await?;
    Ok(())
}
