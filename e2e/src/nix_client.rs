//! Which real Nix client a test runs: the host's (Debian bookworm's
//! `nix-bin`, Nix 2.8) or a newer one (Debian trixie's `nix-bin`, Nix 2.26)
//! installed by `scripts/test-all` in a `debootstrap --variant=minbase`
//! chroot. Users run many Nix versions, and they differ in what a server must
//! handle (docs/protocol.md, "What real Nix clients do"), so the e2e
//! scenarios run against both.
//!
//! The chroot client has its own `/nix/store` inside the chroot and reaches
//! the server on 127.0.0.1 (same network namespace). Each of its commands
//! runs as `unshare --mount -- sh -c 'mount /dev, /proc; exec chroot ROOT
//! PROGRAM…'`: the mounts live in a private mount namespace that ends with
//! the process, so nothing is left mounted on the host. Files a test
//! exchanges with it (expressions, netrc, stores, `XDG_CACHE_HOME`) live
//! under the chroot's `/tmp`, and are passed to it by their path inside.

use std::fmt;
use std::path::{Path, PathBuf};

/// The environment variable naming the newer client's chroot
/// (`scripts/test-all` sets it).
pub const NEWER_ROOT_ENV: &str = "LARDER_NIX_NEWER_ROOT";

/// How a test runs Nix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NixClient {
    /// Nix on the host's `PATH` (Debian bookworm's `nix-bin`, 2.8).
    Native,
    /// Nix installed in the chroot at `root` (Debian trixie's `nix-bin`,
    /// 2.26), with its own store at `root/nix/store`.
    Chroot {
        /// The chroot directory, as the host sees it.
        root: PathBuf,
    },
}

impl NixClient {
    /// The newer client from `$LARDER_NIX_NEWER_ROOT`, if set.
    pub fn newer() -> Option<Self> {
        std::env::var_os(NEWER_ROOT_ENV)
            .filter(|root| !root.is_empty())
            .map(|root| Self::Chroot { root: root.into() })
    }

    /// The clients a Nix scenario runs against: the host's, then the newer
    /// one. A missing client is skipped with a message naming `test`: the
    /// host's when `nix-build` is not on `PATH`, the newer when
    /// `$LARDER_NIX_NEWER_ROOT` is unset (`scripts/test-all` always sets it).
    pub fn under_test(test: &str) -> Vec<Self> {
        let mut clients = Vec::new();
        if crate::nix_available(test) {
            clients.push(Self::Native);
        }
        match Self::newer() {
            Some(client) => clients.push(client),
            None => eprintln!(
                "skipping {test} with the newer Nix: {NEWER_ROOT_ENV} is unset (scripts/test-all sets it)"
            ),
        }
        clients
    }

    /// Fails, saying how to fix it, if the chroot holds no Nix.
    pub fn ensure_installed(&self) -> anyhow::Result<()> {
        match self {
            Self::Native => Ok(()),
            Self::Chroot { root } => {
                anyhow::ensure!(
                    root.join("usr/bin/nix").is_file(),
                    "{NEWER_ROOT_ENV}={} holds no usr/bin/nix: run scripts/test-all, which builds it",
                    root.display()
                );
                Ok(())
            }
        }
    }

    /// Where this client's files are on the host: `path` as the client
    /// sees it, under the chroot for [`Self::Chroot`].
    pub fn host_path(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        match self {
            Self::Native => path.to_owned(),
            Self::Chroot { root } => root.join(path.strip_prefix("/").unwrap_or(path)),
        }
    }

    /// `host_path` as this client sees it. Only paths under
    /// [`Self::temp_dir`] (or the chroot) are visible to a chroot client.
    pub fn client_path(&self, host_path: &Path) -> anyhow::Result<PathBuf> {
        match self {
            Self::Native => Ok(host_path.to_owned()),
            Self::Chroot { root } => host_path
                .strip_prefix(root)
                .map(|inner| Path::new("/").join(inner))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "{} is outside the chroot {}: the newer Nix cannot see it",
                        host_path.display(),
                        root.display()
                    )
                }),
        }
    }

    /// The host directory for this client's temporary files (scratch
    /// directories, stores): the chroot's `/tmp` for [`Self::Chroot`].
    pub fn temp_dir(&self) -> PathBuf {
        match self {
            Self::Native => std::env::temp_dir(),
            Self::Chroot { root } => root.join("tmp"),
        }
    }

    /// A command running `program` (a Nix binary) as this client.
    pub fn command(&self, program: &str) -> tokio::process::Command {
        match self {
            Self::Native => tokio::process::Command::new(program),
            Self::Chroot { root } => {
                let mut cmd = tokio::process::Command::new("unshare");
                cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                    .arg(concat!(
                        r#"mount --rbind /dev "$0/dev" && mount -t proc proc "$0/proc" "#,
                        r#"&& exec chroot "$0" "$@""#
                    ))
                    .arg(root)
                    .arg(program);
                cmd
            }
        }
    }
}

impl fmt::Display for NixClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Native => f.write_str("the host's Nix"),
            Self::Chroot { root } => write!(f, "the newer Nix in {}", root.display()),
        }
    }
}
