//! The real Nix CLI (observed with 2.8 and 2.26): building store paths
//! without nixpkgs, reading their metadata, and substituting them into fresh
//! stores.
//!
//! Every [`Nix`] context has its own `XDG_CACHE_HOME`, because Nix caches
//! narinfos there (docs/protocol.md, "Client cache"): a second substitution with
//! the same cache would test the cache file, not the server. A context runs
//! one [`NixClient`] (the host's Nix or the newer one in a chroot); its
//! scratch files live where that client sees them.
//!
//! Commands used (as root, single-user, no daemon; the same for both):
//! - build: `nix-build --option sandbox false --option substituters ''
//!   --option build-users-group '' --no-out-link FILE.nix`
//! - metadata: `nix --extra-experimental-features nix-command path-info --json PATH…`
//! - NAR: `nix-store --dump PATH`
//! - substitute: `nix … copy --from URL --to DIR PATH… --option
//!   trusted-public-keys KEY --option require-sigs true --option netrc-file F`,
//!   or `nix-store --store DIR --realise PATH… --option substituters URL …`
//! - verify: `nix-store --store DIR --verify-path PATH`, and
//!   `nix … store verify --store DIR --sigs-needed 1 -r PATH…`

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;

pub use crate::nix_client::NixClient;
use crate::path_info::parse_path_infos;
pub use crate::path_info::{PathInfo, base_name, hash_part};
pub use crate::shared_store::with_store_to_itself;
pub use crate::temp_store::{TempStore, compare_trees};

/// Flags Nix 2.8 and 2.26 need for the `nix` command (`copy`, `path-info`,
/// `store`).
pub const NIX_COMMAND: [&str; 2] = ["--extra-experimental-features", "nix-command"];

/// A Nix invocation context: one client, its own `XDG_CACHE_HOME` and
/// scratch directory.
pub struct Nix {
    client: NixClient,
    dir: tempfile::TempDir,
    /// `XDG_CACHE_HOME` as the client sees it.
    xdg_cache: PathBuf,
}

impl Nix {
    /// A fresh context (fresh narinfo cache) running the host's Nix.
    pub fn new() -> anyhow::Result<Self> {
        Self::with_client(&NixClient::Native)
    }

    /// A fresh context (fresh narinfo cache) running `client`.
    pub fn with_client(client: &NixClient) -> anyhow::Result<Self> {
        client.ensure_installed()?;
        let dir = tempfile::Builder::new()
            .prefix("larder-e2e-nix-")
            .tempdir_in(client.temp_dir())?;
        std::fs::create_dir(dir.path().join("xdg-cache"))?;
        let xdg_cache = client.client_path(&dir.path().join("xdg-cache"))?;
        Ok(Self {
            client: client.clone(),
            dir,
            xdg_cache,
        })
    }

    /// The client this context runs.
    pub fn client(&self) -> &NixClient {
        &self.client
    }

    /// Scratch directory (expressions, netrc files), as the host sees it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A store path of this client's store, as the host sees it.
    pub fn store_path_on_host(&self, store_path: &str) -> PathBuf {
        self.client.host_path(store_path)
    }

    /// A command for `program` with this context's `XDG_CACHE_HOME`.
    pub fn command(&self, program: &str) -> tokio::process::Command {
        let mut cmd = self.client.command(program);
        cmd.env("XDG_CACHE_HOME", &self.xdg_cache)
            .env_remove("NIX_CONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// A `nix` command with the experimental-feature flag Nix needs.
    pub fn nix(&self) -> tokio::process::Command {
        let mut cmd = self.command("nix");
        cmd.args(NIX_COMMAND);
        cmd
    }

    /// Builds the expression in `file` and returns its outputs, one per line
    /// of `nix-build`'s stdout.
    pub async fn build(&self, file: &Path) -> anyhow::Result<Vec<String>> {
        self.build_with(file, &[]).await
    }

    /// [`Self::build`] with more `--option NAME VALUE` pairs (e.g. a
    /// `post-build-hook`).
    pub async fn build_with(
        &self,
        file: &Path,
        options: &[(&str, &str)],
    ) -> anyhow::Result<Vec<String>> {
        let _shared = crate::shared_store::build_guard().await;
        let mut cmd = self.command("nix-build");
        for (name, value) in options {
            cmd.args(["--option", name, value]);
        }
        cmd.args(["--option", "sandbox", "false"])
            .args(["--option", "substituters", ""])
            .args(["--option", "build-users-group", ""])
            .arg("--no-out-link")
            .arg(self.client.client_path(file)?);
        let out = run(cmd).await?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// The closure of `paths`, references first (`nix-store -qR`).
    pub async fn closure(&self, paths: &[String]) -> anyhow::Result<Vec<String>> {
        let mut cmd = self.command("nix-store");
        cmd.arg("-qR").args(paths);
        let out = run(cmd).await?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// Metadata of `paths` from the local store (`nix path-info --json`).
    pub async fn path_info(&self, paths: &[String]) -> anyhow::Result<Vec<PathInfo>> {
        let mut cmd = self.nix();
        cmd.args(["path-info", "--json"]).args(paths);
        let out = run(cmd).await?;
        parse_path_infos(&out, paths)
    }

    /// Deletes test paths from the system store (`nix-store --delete`), so
    /// repeated runs do not fill it; they have no GC roots (`--no-out-link`).
    /// Pass whole closures: a path still referenced cannot be deleted.
    pub async fn delete(&self, paths: &[String]) -> anyhow::Result<()> {
        let mut cmd = self.command("nix-store");
        cmd.arg("--delete").args(paths);
        run(cmd).await.map(drop)
    }

    /// Writes a netrc giving `token` as the password for `host`: stock Nix
    /// sends only netrc credentials (as Basic) to a private cache. Returns
    /// its path as this context's Nix sees it (for `netrc-file`).
    pub fn write_netrc(&self, host: &str, token: &str) -> anyhow::Result<PathBuf> {
        self.write_netrc_text(&format!("machine {host}\nlogin larder\npassword {token}\n"))
    }

    /// Writes `text` as this context's netrc file (replacing the previous
    /// one); returns its path as this context's Nix sees it.
    pub fn write_netrc_text(&self, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir().join("netrc");
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        self.client.client_path(&path)
    }

    /// A fresh chroot store where this context's Nix can reach it.
    pub fn temp_store(&self) -> anyhow::Result<TempStore> {
        TempStore::new_for(&self.client)
    }

    /// `nix copy --from CACHE_URL --to <fresh chroot store>` with signature
    /// checking on; returns the store.
    pub async fn copy_from(
        &self,
        cache_url: &str,
        sub: &Substituter<'_>,
        paths: &[String],
    ) -> anyhow::Result<TempStore> {
        let store = self.temp_store()?;
        let mut cmd = self.nix();
        cmd.args(["copy", "--from", cache_url, "--to"])
            .arg(store.client_root())
            .args(paths);
        sub.options(&mut cmd);
        run(cmd).await.context("nix copy --from the cache")?;
        Ok(store)
    }

    /// `nix-store --store <fresh chroot store> --realise PATH…` with the cache
    /// as the only substituter and signature checking on; returns the store.
    pub async fn realise_from(
        &self,
        cache_url: &str,
        sub: &Substituter<'_>,
        paths: &[String],
    ) -> anyhow::Result<TempStore> {
        let store = self.temp_store()?;
        let mut cmd = self.command("nix-store");
        cmd.arg("--store")
            .arg(store.client_root())
            .arg("--realise")
            .args(paths)
            .args(["--option", "substituters", cache_url])
            .args(["--option", "build-users-group", ""])
            // Substitution only: building here would mean the cache failed.
            .args(["--option", "max-jobs", "0"]);
        sub.options(&mut cmd);
        run(cmd)
            .await
            .context("nix-store --realise from the cache")?;
        Ok(store)
    }

    /// `nix copy --to URL PATH…` (stock Nix's HTTP upload; `URL` may carry
    /// `?compression=…`), sending the token from `netrc`.
    pub async fn copy_to(&self, url: &str, netrc: &Path, paths: &[String]) -> anyhow::Result<()> {
        let mut cmd = self.nix();
        cmd.args(["copy", "--to", url])
            .args(paths)
            .arg("--option")
            .arg("netrc-file")
            .arg(netrc);
        run(cmd)
            .await
            .with_context(|| format!("nix copy --to {url}"))
            .map(drop)
    }

    /// `nix copy --from CACHE_URL --to <fresh chroot store>` **without**
    /// signature checking. Only for a narinfo this context's cache holds
    /// from its own upload: Nix 2.8 caches the narinfo it wrote, unsigned,
    /// and uses it instead of the server's signed one (for 30 days), so
    /// `require-sigs` would refuse it. The NAR hash is still checked.
    pub async fn copy_from_unsigned(
        &self,
        cache_url: &str,
        netrc: &Path,
        paths: &[String],
    ) -> anyhow::Result<TempStore> {
        let store = self.temp_store()?;
        let mut cmd = self.nix();
        cmd.args(["copy", "--from", cache_url, "--to"])
            .arg(store.client_root())
            .args(paths)
            .args(["--option", "require-sigs", "false"])
            .arg("--option")
            .arg("netrc-file")
            .arg(netrc);
        run(cmd)
            .await
            .context("nix copy --from the cache, unsigned")?;
        Ok(store)
    }

    /// `nix path-info --json --store CACHE_URL PATH`: what this context's
    /// Nix knows of `path` in a binary cache (its narinfo cache first), with
    /// the `url` and `compression` it would fetch.
    pub async fn cache_path_info(
        &self,
        cache_url: &str,
        netrc: &Path,
        path: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let mut cmd = self.nix();
        cmd.args(["path-info", "--json", "--store", cache_url, path])
            .arg("--option")
            .arg("netrc-file")
            .arg(netrc);
        let out = run(cmd).await?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .with_context(|| format!("parsing `nix path-info --json --store`: {out}"))?;
        // 2.8: a list of objects with `path`; 2.26: an object keyed by path.
        v.get(0)
            .or_else(|| v.get(path))
            .filter(|info| !info.is_null())
            .cloned()
            .with_context(|| format!("no path-info for {path} in {cache_url}: {out}"))
    }

    /// Checks that `store` holds every path of `closure` with contents
    /// matching their registered NAR hash, with a signature by a trusted key,
    /// and byte-identical to the same path in this client's system store.
    pub async fn verify(
        &self,
        store: &TempStore,
        public_key: &str,
        closure: &[String],
    ) -> anyhow::Result<()> {
        self.verify_built_by(store, public_key, closure, &self.client)
            .await
    }

    /// [`Self::verify`] for paths built in `builder`'s system store (another
    /// client pushed them).
    pub async fn verify_built_by(
        &self,
        store: &TempStore,
        public_key: &str,
        closure: &[String],
        builder: &NixClient,
    ) -> anyhow::Result<()> {
        self.verify_contents_built_by(store, closure, builder)
            .await?;
        let mut cmd = self.nix();
        cmd.args(["store", "verify", "--store"])
            .arg(store.client_root())
            .args(["--sigs-needed", "1"])
            .args(["--option", "trusted-public-keys", public_key])
            .args(closure);
        run(cmd).await.context("nix store verify --sigs-needed 1")?;
        Ok(())
    }

    /// [`Self::verify`] without the signature: `--verify-path` (contents
    /// match the registered NAR hash) and byte-identical to this client's
    /// system store.
    pub async fn verify_contents(
        &self,
        store: &TempStore,
        closure: &[String],
    ) -> anyhow::Result<()> {
        self.verify_contents_built_by(store, closure, &self.client)
            .await
    }

    /// [`Self::verify_contents`] for paths built in `builder`'s system store.
    pub async fn verify_contents_built_by(
        &self,
        store: &TempStore,
        closure: &[String],
        builder: &NixClient,
    ) -> anyhow::Result<()> {
        for path in closure {
            let mut cmd = self.command("nix-store");
            cmd.arg("--store")
                .arg(store.client_root())
                .args(["--verify-path", path]);
            run(cmd)
                .await
                .with_context(|| format!("verify-path {path}"))?;
        }
        for path in closure {
            compare_trees(&builder.host_path(path), &store.real_path(path))?;
        }
        Ok(())
    }
}

/// Substitution settings shared by `nix copy` and `nix-store --realise`.
pub struct Substituter<'a> {
    /// The cache's `name:base64` public key, the only trusted key.
    pub public_key: &'a str,
    /// A netrc file with the token (see [`Nix::write_netrc`]).
    pub netrc: &'a Path,
}

impl Substituter<'_> {
    fn options(&self, cmd: &mut tokio::process::Command) {
        cmd.args(["--option", "trusted-public-keys", self.public_key])
            .args(["--option", "require-sigs", "true"])
            .arg("--option")
            .arg("netrc-file")
            .arg(self.netrc);
    }
}

/// Runs `cmd` to completion; returns stdout, or an error with the command
/// line, status and stderr.
pub async fn run(mut cmd: tokio::process::Command) -> anyhow::Result<String> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let line = format!("{:?}", cmd.as_std());
    let out = cmd
        .output()
        .await
        .with_context(|| format!("spawning {line}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{line} failed ({})\nstderr:\n{}\nstdout:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    String::from_utf8(out.stdout).context("non-UTF-8 output")
}
