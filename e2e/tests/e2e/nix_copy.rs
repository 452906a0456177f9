//! Stock `nix copy --to http://…/<cache>?compression=…` in every compression
//! Nix 2.8 uploads, by Nix 2.8 and by the newer Nix (2.26), then substitution
//! back (docs/protocol.md, "Push" and "NAR
//! URLs"): with a fresh narinfo cache (the server's signed narinfo), and with
//! the uploader's cache, whose narinfo names the uploaded file.

use std::time::{Duration, Instant};

use larder_e2e::client::{nix_base32, typed_nix_base32};
use larder_e2e::nix::Substituter;
use larder_e2e::tree::random_seed;
use larder_e2e::{
    Client, Nix, NixClient, PathInfo, Server, ServerOptions, StoreTree, Worker, wait,
};
use sha2::{Digest, Sha256};

/// Every compression Nix 2.8 uploads, with the file extension of its URL
/// (`gzip` and `none` both get a bare `.nar`).
const COMPRESSIONS: [(&str, &str); 8] = [
    ("xz", ".nar.xz"),
    ("zstd", ".nar.zst"),
    ("bzip2", ".nar.bz2"),
    ("br", ".nar.br"),
    ("gzip", ".nar"),
    ("lz4", ".nar.lz4"),
    ("lzip", ".nar.lzip"),
    ("none", ".nar"),
];

/// Larder's own URL of an ingested NAR: `nar/<narhash>.nar.zst`.
fn ingested_url(info: &PathInfo) -> anyhow::Result<String> {
    let hash = typed_nix_base32(&info.nar_hash)?;
    let hash = hash.strip_prefix("sha256:").unwrap_or(&hash);
    Ok(format!("nar/{hash}.nar.zst"))
}

/// One compression's upload: the uploader's Nix context (its narinfo cache
/// holds what it uploaded), the main path, and its closure.
struct Upload {
    compression: &'static str,
    ext: &'static str,
    uploader: Nix,
    netrc: std::path::PathBuf,
    main: String,
    closure: Vec<String>,
}

/// Checks what the uploader's Nix would fetch for `upload.main`: the URL it
/// uploaded (`nix path-info --json` shows no compression, but the URL has
/// its extension). Returns that URL and the file's hash
/// (`sha256:<nix-base32>`) and size as Nix recorded them.
async fn uploader_view(upload: &Upload, cache_url: &str) -> anyhow::Result<(String, String, u64)> {
    let v = upload
        .uploader
        .cache_path_info(cache_url, &upload.netrc, &upload.main)
        .await?;
    let url = v["url"].as_str().unwrap_or_default().to_owned();
    anyhow::ensure!(
        url.starts_with("nar/") && url.ends_with(upload.ext),
        "the uploader's Nix cached url {url:?}, want nar/*{} ({}): {v}",
        upload.ext,
        upload.compression
    );
    let hash = typed_nix_base32(v["downloadHash"].as_str().unwrap_or_default())?;
    let size = v["downloadSize"].as_u64().unwrap_or_default();
    anyhow::ensure!(
        hash.starts_with("sha256:") && size > 0,
        "no file hash or size in {v}"
    );
    Ok((url, hash, size))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_copy_to_every_compression() -> anyhow::Result<()> {
    let clients = NixClient::under_test("nix_copy_to_every_compression");
    if clients.is_empty() {
        return Ok(());
    }
    // No in-process workers: every upload is still staged when it is first
    // substituted; a worker ingests them all afterwards.
    let server = Server::start_embedded(ServerOptions::without_workers()).await?;
    let root = server.client();
    let cache = "e2e-compression";
    root.create_cache(cache).await?;
    let public_key = root.public_key(cache).await?;
    let cache_url = format!("{}/{cache}", server.url());

    // Each client uploads, from its own store, one path per compression.
    let started = Instant::now();
    let mut builders = Vec::new();
    let mut uploads = Vec::new();
    let mut infos = Vec::new();
    for client in &clients {
        let nix = Nix::with_client(client)?;
        let mains = StoreTree::pairs(random_seed(), "larder-e2e-compression", COMPRESSIONS.len())
            .build(&nix)
            .await?;
        let mut closures = Vec::new();
        for ((compression, ext), main) in COMPRESSIONS.into_iter().zip(mains) {
            let what = format!("{client}, compression {compression}, staged");
            let closure = nix.closure(std::slice::from_ref(&main)).await?;
            assert_eq!(closure.len(), 2, "{main} should have one dependency");
            let uploader = Nix::with_client(client)?;
            let netrc = uploader.write_netrc("127.0.0.1", server.token())?;
            uploader
                .copy_to(
                    &format!("{cache_url}?compression={compression}"),
                    &netrc,
                    std::slice::from_ref(&main),
                )
                .await
                .map_err(|e| e.context(what.clone()).context(server.log()))?;
            let upload = Upload {
                compression,
                ext,
                uploader,
                netrc,
                main,
                closure,
            };
            uploader_view(&upload, &cache_url)
                .await
                .map_err(|e| e.context(what.clone()))?;

            // A fresh narinfo cache: the server's signed narinfo, signature
            // checked, served from staging.
            let fresh = Nix::with_client(client)?;
            let fresh_netrc = fresh.write_netrc("127.0.0.1", server.token())?;
            let sub = Substituter {
                public_key: &public_key,
                netrc: &fresh_netrc,
            };
            let store = fresh
                .copy_from(&cache_url, &sub, std::slice::from_ref(&upload.main))
                .await
                .map_err(|e| e.context(what.clone()))?;
            fresh
                .verify(&store, &public_key, &upload.closure)
                .await
                .map_err(|e| e.context(what))?;
            closures.extend(upload.closure.iter().cloned());
            uploads.push(upload);
        }
        infos.extend(nix.path_info(&closures).await?);
        builders.push((nix, closures));
    }
    let staged_time = started.elapsed();

    // A worker ingests everything.
    let worker = Worker::start(&server)?;
    let ingest_started = Instant::now();
    wait_ingested_here(&root, cache, &infos, &worker).await?;
    let ingest_time = ingest_started.elapsed();

    // The uploader's Nix still fetches the URL it uploaded: it answers in
    // that compression (same bytes as uploaded), and substitutes. Nix's
    // cached narinfo is the unsigned one it wrote, so no signature check
    // here (see Nix::copy_from_unsigned); the NAR hash is checked.
    for upload in &uploads {
        let what = format!(
            "{}, compression {}, uploader's narinfo cache",
            upload.uploader.client(),
            upload.compression
        );
        let (url, hash, size) = uploader_view(upload, &cache_url)
            .await
            .map_err(|e| e.context(what.clone()))?;
        let d = root.download(cache, &url).await?;
        anyhow::ensure!(
            d.content_length == Some(d.body.len() as u64) && d.body.len() as u64 == size,
            "{what}: GET {url}: Content-Length {:?}, body {}, uploaded FileSize {size}",
            d.content_length,
            d.body.len()
        );
        let got = format!("sha256:{}", nix_base32(&Sha256::digest(&d.body)));
        anyhow::ensure!(
            got == hash,
            "{what}: GET {url} is not the uploaded file: {got}, uploaded {hash}"
        );
        let store = upload
            .uploader
            .copy_from_unsigned(
                &cache_url,
                &upload.netrc,
                std::slice::from_ref(&upload.main),
            )
            .await
            .map_err(|e| e.context(what.clone()))?;
        upload
            .uploader
            .verify_contents(&store, &upload.closure)
            .await
            .map_err(|e| e.context(what))?;
    }

    // And a fresh narinfo cache now gets the ingested zstd NARs, signed.
    for (nix, closures) in &builders {
        let client = nix.client();
        let fresh = Nix::with_client(client)?;
        let fresh_netrc = fresh.write_netrc("127.0.0.1", server.token())?;
        let sub = Substituter {
            public_key: &public_key,
            netrc: &fresh_netrc,
        };
        let mains: Vec<String> = uploads
            .iter()
            .filter(|u| u.uploader.client() == client)
            .map(|u| u.main.clone())
            .collect();
        let store = fresh
            .copy_from(&cache_url, &sub, &mains)
            .await
            .map_err(|e| e.context(format!("{client}, ingested")))?;
        fresh
            .verify(&store, &public_key, closures)
            .await
            .map_err(|e| e.context(format!("{client}, ingested")))?;
    }
    eprintln!(
        "{} compressions uploaded and substituted by {} client(s) in {staged_time:?}; ingested in {ingest_time:?}; total {:?}",
        COMPRESSIONS.len(),
        clients.len(),
        started.elapsed()
    );
    for (nix, closures) in &builders {
        nix.delete(closures).await?;
    }
    Ok(())
}

/// Polls until every narinfo names Larder's own `nar/<narhash>.nar.zst`
/// (a `zstd` upload already says `Compression: zstd` before ingest, under
/// the uploader's file hash).
async fn wait_ingested_here(
    client: &Client,
    cache: &str,
    infos: &[PathInfo],
    worker: &Worker,
) -> anyhow::Result<()> {
    wait::until(
        "every narinfo to name nar/<narhash>.nar.zst",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || async {
            worker.ensure_running()?;
            for info in infos {
                let ni = client.narinfo(cache, &info.path).await?;
                if ni.compression() != "zstd" || ni.url() != ingested_url(info)? {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .map_err(|e| e.context(worker.log()))
}
