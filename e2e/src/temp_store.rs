//! Throw-away chroot stores for substitution tests, and the tree comparison
//! that checks what was substituted.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::nix_client::NixClient;

/// A chroot store (`<root>/nix/store/…`) in a temporary directory. Nix makes
/// store paths read-only, so cleanup restores write permission first.
pub struct TempStore {
    dir: Option<tempfile::TempDir>,
    /// The root as the client that uses it sees it.
    client_root: PathBuf,
}

impl TempStore {
    /// An empty store for the host's Nix (Nix initialises it on first use).
    pub fn new() -> anyhow::Result<Self> {
        Self::new_for(&NixClient::Native)
    }

    /// An empty store where `client` can reach it.
    pub fn new_for(client: &NixClient) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("larder-e2e-store-")
            .tempdir_in(client.temp_dir())?;
        let client_root = client.client_path(dir.path())?;
        Ok(Self {
            dir: Some(dir),
            client_root,
        })
    }

    /// The store's root on the host.
    pub fn root(&self) -> &Path {
        self.dir.as_ref().expect("lives until drop").path()
    }

    /// The store's root as its client sees it (pass as `--store` / `--to`).
    pub fn client_root(&self) -> &Path {
        &self.client_root
    }

    /// Where `store_path` lives on disk in this store.
    pub fn real_path(&self, store_path: &str) -> PathBuf {
        self.root().join(store_path.trim_start_matches('/'))
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            make_writable(dir.path());
            let _ = dir.close();
        }
    }
}

fn make_writable(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                make_writable(&entry.path());
            }
        }
    }
}

/// Checks that two file trees are identical as a NAR sees them: types,
/// bytes, executable bits, symlink targets, entry names.
pub fn compare_trees(want: &Path, got: &Path) -> anyhow::Result<()> {
    let wm =
        std::fs::symlink_metadata(want).with_context(|| format!("reading {}", want.display()))?;
    let gm = std::fs::symlink_metadata(got)
        .with_context(|| format!("substituted copy {} is missing", got.display()))?;
    let differ =
        |what: &str| anyhow::anyhow!("{} and {} differ: {what}", want.display(), got.display());
    if wm.file_type().is_symlink() {
        anyhow::ensure!(gm.file_type().is_symlink(), differ("symlink vs not"));
        anyhow::ensure!(
            std::fs::read_link(want)? == std::fs::read_link(got)?,
            differ("symlink target")
        );
    } else if wm.is_dir() {
        anyhow::ensure!(gm.is_dir(), differ("directory vs not"));
        let names = |p: &Path| -> anyhow::Result<Vec<std::ffi::OsString>> {
            let mut v: Vec<_> = std::fs::read_dir(p)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()?;
            v.sort();
            Ok(v)
        };
        let (wn, gn) = (names(want)?, names(got)?);
        anyhow::ensure!(wn == gn, differ(&format!("entries {wn:?} vs {gn:?}")));
        for name in wn {
            compare_trees(&want.join(&name), &got.join(&name))?;
        }
    } else {
        anyhow::ensure!(gm.is_file(), differ("file vs not"));
        let exec = |m: &std::fs::Metadata| m.permissions().mode() & 0o100 != 0;
        anyhow::ensure!(exec(&wm) == exec(&gm), differ("executable bit"));
        anyhow::ensure!(
            wm.len() == gm.len(),
            differ(&format!("size {} vs {}", wm.len(), gm.len()))
        );
        anyhow::ensure!(
            std::fs::read(want)? == std::fs::read(got)?,
            differ("contents")
        );
    }
    Ok(())
}
