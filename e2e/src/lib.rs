//! End-to-end harness: the real `larder-api` and `larder-worker` binaries on a
//! free loopback port, and the real Nix CLI (2.8 or later) building,
//! dumping, copying and verifying real store paths. Loopback only, or
//! network namespaces a test creates itself ([`netns`]).
//!
//! # Running
//!
//! The harness builds nothing. Build the binaries first, then run the tests:
//!
//! ```text
//! cargo build --workspace --bins && cargo test -p larder-e2e
//! ```
//!
//! Binaries are looked up next to the test executable (`target/<profile>/`),
//! or in `$LARDER_E2E_BIN_DIR` when set; a missing binary fails the test with
//! that instruction. Tests that run Nix skip (with a message) only when
//! `nix-build` is not on `PATH`; CI installs Nix, so there they run. The Nix
//! scenarios also run against a newer Nix (2.26) in a chroot named by
//! `$LARDER_NIX_NEWER_ROOT`, which `scripts/test-all` installs and sets;
//! unset, those runs are skipped with a message.
//!
//! # Pieces
//!
//! - [`server`]: [`Server`] (the embedded default in a temporary data
//!   directory) and [`Worker`] (a separate `larder-worker` process).
//! - [`nix`]: a [`Nix`] context with its own `XDG_CACHE_HOME` (docs/protocol.md:
//!   Nix caches narinfos): building, metadata, substitution into a fresh
//!   chroot store with signature checking, verification.
//! - [`nix_client`]: [`NixClient`], which Nix a context runs (the host's, or
//!   the newer one in a chroot) and where its files are.
//! - [`tree`]: [`StoreTree`], real derivation trees built without nixpkgs.
//! - [`client`]: the HTTP side: cache creation, Attic `upload-path` streamed
//!   from `nix-store --dump`, narinfo reads.
//! - [`attic`]: an Attic deployment (PostgreSQL in Attic's schema, chunk
//!   files, `server.toml`, tokens as `atticadm` mints them) for
//!   `larder-admin import-attic`.
//! - [`cli`]: the `larder` CLI as one user (own `XDG_CONFIG_HOME` and
//!   `XDG_CACHE_HOME`), `larder-admin`, push summaries.
//! - [`replica`]: the production shape: a fresh PostgreSQL database and
//!   `larder-api -f CONFIG` replicas.
//! - [`fault_proxy`]: a loopback proxy cutting each NAR's first response
//!   at half its length (resumed downloads), or answering chosen
//!   chunk-push commits with the server's own `409`s (the client's
//!   fallbacks); it records what it saw.
//! - [`nginx`]: Debian's nginx with `proxy_cache` in front of Larder.
//! - [`cluster`]: the compose topology as processes: two replicas and three
//!   workers, each on a host of its own ([`netns`]: a network namespace
//!   and veth pair), PostgreSQL and S3 relayed to them by [`tcp_forward`],
//!   each configured by [`node_config`]. Needs root for the namespaces;
//!   without them (or with `LARDER_E2E_NO_NETNS=1`) the nodes run as plain
//!   loopback processes.
//! - [`wait`]: bounded polling, the only way tests wait.

pub mod attic;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod fault_proxy;
pub mod netns;
pub mod nginx;
pub mod nix;
pub mod nix_client;
pub mod nix_log;
pub mod node_config;
pub mod path_info;
pub mod replica;
pub mod server;
pub mod shared_store;
pub mod tcp_forward;
pub mod temp_store;
pub mod tree;
pub mod wait;
pub mod worker;

pub use cli::{LarderCli, PushSummary};
pub use client::{Client, Narinfo};
pub use nix::{Nix, PathInfo, TempStore};
pub use nix_client::NixClient;
pub use server::{Server, ServerOptions};
pub use tree::StoreTree;
pub use worker::Worker;

use std::path::PathBuf;

/// Directory holding the workspace's binaries: `$LARDER_E2E_BIN_DIR`, else
/// `target/<profile>` (two levels above `target/<profile>/deps/<test>`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("LARDER_E2E_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("cannot locate the target directory from {}", exe.display()))
}

/// Path of a workspace binary; an error says how to build it when missing.
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.is_file() {
        anyhow::bail!(
            "binary {} not found: run `cargo build --workspace --bins` before `cargo test -p larder-e2e`",
            path.display()
        );
    }
    Ok(path)
}

/// True if `program` is an executable file in a `PATH` directory.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Whether the end-to-end tests can run; prints why not when they cannot.
/// Only a missing Nix skips a test: missing binaries fail it.
pub fn nix_available(test: &str) -> bool {
    let ok = on_path("nix-build");
    if !ok {
        eprintln!(
            "skipping {test}: `nix-build` is not on PATH (install Nix, e.g. Debian's nix-bin)"
        );
    }
    ok
}

/// The last `max` bytes of a log file, for error messages.
pub fn log_tail(path: &std::path::Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            format!(
                "--- {} (last {} bytes) ---\n{}",
                path.display(),
                bytes.len() - start,
                String::from_utf8_lossy(&bytes[start..])
            )
        }
        Err(e) => format!("--- {}: {e} ---", path.display()),
    }
}
