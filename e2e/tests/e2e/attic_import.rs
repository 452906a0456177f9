//! Moving from Attic (docs/operations.md "Moving from Attic"): an Attic
//! deployment (PostgreSQL, chunk files, RS256 key) holding real store paths
//! is imported by `larder-admin import-attic`; Larder takes the `[jwt]`
//! lines the import prints, and the host's real Nix then substitutes the
//! paths trusting only Attic's original public key, authenticated by a
//! token minted as `atticadm make-token` mints it. Attic's NAR URL shape
//! (`nar/<store-path-hash>.nar`, what hosts' cached narinfos name) serves
//! the same bytes, and Attic's database and storage are unchanged.

use std::time::Duration;

use anyhow::Context as _;
use larder_e2e::attic::{AtticDeployment, AtticPath};
use larder_e2e::nix::{Substituter, hash_part, run};
use larder_e2e::tree::random_seed;
use larder_e2e::{Client, Nix, Server, ServerOptions, StoreTree, nix_available, wait};

/// Bound on the workers ingesting the imported NARs.
const INGEST_LIMIT: Duration = Duration::from_secs(120);

/// The `[jwt]` lines `import-attic` prints for larder.toml.
fn jwt_lines(stdout: &str) -> anyhow::Result<String> {
    let start = stdout
        .find("[jwt]\n")
        .with_context(|| format!("no [jwt] lines in:\n{stdout}"))?;
    let block = &stdout[start..];
    let end = block.find("\n\n").map_or(block.len(), |i| i + 1);
    Ok(block[..end].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_pulls_what_was_imported_from_attic() -> anyhow::Result<()> {
    if !nix_available("nix_pulls_what_was_imported_from_attic") {
        return Ok(());
    }
    // Real store paths: a 200 KiB path (chunked by Attic) referring to a
    // small one.
    let builder = Nix::new()?;
    let main = StoreTree::chain(random_seed(), "larder-e2e-attic", &[3000, 200 * 1024])
        .build(&builder)
        .await?
        .pop()
        .context("one top")?;
    let closure = builder.closure(std::slice::from_ref(&main)).await?;
    assert_eq!(closure.len(), 2, "{main} should have one dependency");
    let infos = builder.path_info(&closure).await?;
    let mut nars = Vec::new();
    for info in &infos {
        let out = builder
            .command("nix-store")
            .arg("--dump")
            .arg(&info.path)
            .output()
            .await?;
        anyhow::ensure!(out.status.success(), "nix-store --dump {}", info.path);
        nars.push(out.stdout);
    }

    // Attic holds them in a private cache signed with its own key.
    let mut keygen = builder.command("nix-store");
    keygen
        .arg("--generate-binary-cache-key")
        .arg("attic-e2e-1")
        .arg(builder.dir().join("attic.sec"))
        .arg(builder.dir().join("attic.pub"));
    run(keygen).await?;
    let secret = std::fs::read_to_string(builder.dir().join("attic.sec"))?;
    let public_key = std::fs::read_to_string(builder.dir().join("attic.pub"))?;
    let attic = AtticDeployment::create().await?;
    let cache = "attic-e2e";
    let cache_id = attic.add_cache(cache, secret.trim(), false, 41).await?;
    for (info, nar) in infos.iter().zip(&nars) {
        let path = AtticPath {
            store_path: &info.path,
            nar,
            references: &info.references,
        };
        attic.add_path(cache_id, &path, 64 * 1024).await?;
    }
    let before = attic.dump().await?;

    // Import, then take the `[jwt]` lines it prints (Attic's RS256 key).
    let mut server = Server::start_embedded(ServerOptions::default()).await?;
    let config = server.config_path();
    let from = attic.config_path();
    let args = [
        "import-attic",
        "--from",
        from.to_str().context("UTF-8 path")?,
    ];
    let out = larder_e2e::cli::admin(&config, &args).await?;
    anyhow::ensure!(out.contains("failures:           0"), "{out}");
    let text = std::fs::read_to_string(&config)?;
    let cut = text
        .find("[jwt.signing]")
        .context("generated [jwt.signing]")?;
    std::fs::write(&config, format!("{}{}", &text[..cut], jwt_lines(&out)?))?;
    server.restart().await?;

    // A token minted as atticadm mints it pulls through Larder.
    let token = attic.make_token("attic-host", cache).await?;
    let client = Client::new(&server.url(), &token);
    for info in &infos {
        wait::until(
            "the imported NAR's ingest",
            INGEST_LIMIT,
            Duration::from_millis(200),
            || async {
                let ni = client.narinfo(cache, &info.path).await?;
                Ok((ni.compression() == "zstd").then_some(()))
            },
        )
        .await
        .map_err(|e| e.context(server.log()))?;
    }
    let nix = Nix::new()?;
    let netrc = nix.write_netrc("127.0.0.1", &token)?;
    let sub = Substituter {
        public_key: public_key.trim(),
        netrc: &netrc,
    };
    let cache_url = format!("{}/{cache}", server.url());
    let store = nix
        .copy_from(&cache_url, &sub, std::slice::from_ref(&main))
        .await
        .map_err(|e| e.context(server.log()))?;
    nix.verify(&store, public_key.trim(), &closure).await?;
    builder.verify_contents(&store, &closure).await?;

    // Attic's NAR URL shape serves each path's NAR.
    for (info, nar) in infos.iter().zip(&nars) {
        let got = client
            .download(cache, &format!("nar/{}.nar", hash_part(&info.path)))
            .await?;
        anyhow::ensure!(got.body == *nar, "Attic-shaped URL of {}", info.path);
    }

    // Attic's database and storage were only read.
    anyhow::ensure!(
        attic.dump().await? == before,
        "Attic's database or storage changed"
    );
    server.stop().await?;
    attic.drop_now().await
}
