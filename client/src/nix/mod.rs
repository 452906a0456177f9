//! The local Nix installation, reached through its command-line tools.
//!
//! Larder talks to Nix the way a user would (`nix-store -qR`, `nix
//! path-info --json`, `nix-store --dump`) instead of opening the store
//! database or the daemon socket: the CLI is Nix's stable interface across
//! 2.8 and later releases, and works for single- and multi-user installs
//! alike. `nix` needs `--extra-experimental-features nix-command` on 2.8.

pub mod path_info;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::{Stream, StreamExt as _, stream};
use tokio::io::AsyncReadExt as _;
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;
use tokio_util::io::ReaderStream;

use larder_core::nix::store_path::{StoreDir, StoreDirError, StorePath};

pub use path_info::{PathInfo, PathInfoError};

/// Paths per `nix-store -qR` or `nix path-info` invocation: well below
/// the kernel's argument-size limit even for long store paths.
const ARGS_PER_CALL: usize = 500;
/// Symlinks followed when resolving a path such as `./result`.
const MAX_SYMLINKS: usize = 40;
/// Bytes of a tool's stderr kept for error messages.
const STDERR_LIMIT: usize = 16 * 1024;
/// Read size of NAR streams.
const DUMP_CHUNK: usize = 64 * 1024;

/// Why the local Nix could not answer.
#[derive(Debug, thiserror::Error)]
pub enum NixError {
    /// `NIX_STORE_DIR` is not a valid store directory.
    #[error("invalid NIX_STORE_DIR: {0}")]
    StoreDir(#[from] StoreDirError),
    /// The program could not be started (Nix not installed, not in PATH).
    #[error("cannot run {program}: {source} (is Nix installed and in PATH?)")]
    Spawn {
        /// The program.
        program: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line, abbreviated.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The program printed something unusable.
    #[error("`{command}` printed unexpected output: {reason}")]
    Output {
        /// The command line, abbreviated.
        command: String,
        /// What was wrong.
        reason: String,
    },
    /// `nix path-info --json` output that does not parse.
    #[error(transparent)]
    PathInfo(#[from] PathInfoError),
    /// A path argument that does not lead into the store.
    #[error("{path} is not in the Nix store {store_dir}")]
    NotInStore {
        /// The argument.
        path: PathBuf,
        /// The store directory.
        store_dir: StoreDir,
    },
    /// A path argument that could not be examined.
    #[error("cannot resolve {path}: {source}")]
    Resolve {
        /// The argument.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The local Nix store and its tools.
#[derive(Debug, Clone)]
pub struct Nix {
    store_dir: StoreDir,
}

impl Nix {
    /// The store `$NIX_STORE_DIR` names (as Nix itself honours it), else
    /// `/nix/store`.
    pub fn from_env() -> Result<Self, NixError> {
        let store_dir = match std::env::var("NIX_STORE_DIR") {
            Ok(dir) if !dir.is_empty() => dir.trim_end_matches('/').parse()?,
            _ => StoreDir::default(),
        };
        Ok(Self { store_dir })
    }

    /// The store directory.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// Turns a user's argument (`/nix/store/…`, `./result`, a file inside a
    /// store path) into its store path, following symlinks only while
    /// outside the store, as Nix's `followLinksToStorePath` does.
    pub fn resolve_path(&self, arg: &Path) -> Result<StorePath, NixError> {
        let resolve_err = |source| NixError::Resolve {
            path: arg.to_owned(),
            source,
        };
        let mut path = std::path::absolute(arg).map_err(resolve_err)?;
        for _ in 0..MAX_SYMLINKS {
            if let Some(store_path) = self.store_path_of(&path) {
                return store_path.ok_or_else(|| self.not_in_store(arg));
            }
            let meta = std::fs::symlink_metadata(&path).map_err(resolve_err)?;
            if !meta.file_type().is_symlink() {
                break;
            }
            let target = std::fs::read_link(&path).map_err(resolve_err)?;
            path = match path.parent() {
                Some(parent) if target.is_relative() => parent.join(target),
                _ => target,
            };
        }
        Err(self.not_in_store(arg))
    }

    fn not_in_store(&self, arg: &Path) -> NixError {
        NixError::NotInStore {
            path: arg.to_owned(),
            store_dir: self.store_dir.clone(),
        }
    }

    /// `None` when `path` is outside the store; `Some(None)` when it is
    /// inside but its first component is not a store path name.
    fn store_path_of(&self, path: &Path) -> Option<Option<StorePath>> {
        let rest = path.strip_prefix(self.store_dir.as_str()).ok()?;
        let first = rest.components().next()?;
        Some(
            first
                .as_os_str()
                .to_str()
                .and_then(|s| StorePath::from_base_name(s).ok()),
        )
    }

    /// The closure of `paths` (`nix-store -qR`), each path once.
    pub async fn closure(&self, paths: &[StorePath]) -> Result<Vec<StorePath>, NixError> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for batch in paths.chunks(ARGS_PER_CALL) {
            let mut cmd = Command::new("nix-store");
            cmd.arg("--query").arg("--requisites");
            cmd.args(batch.iter().map(|p| p.to_absolute(&self.store_dir)));
            let text = run(cmd, "nix-store", "nix-store --query --requisites").await?;
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let path = path_info::parse_path(&self.store_dir, line)?;
                if seen.insert(path.clone()) {
                    out.push(path);
                }
            }
        }
        Ok(out)
    }

    /// Metadata of `paths` (`nix path-info --json`), in batches. Never
    /// substitutes: a path missing locally is an error, not a download.
    pub async fn path_info(&self, paths: &[StorePath]) -> Result<Vec<PathInfo>, NixError> {
        let mut out = Vec::with_capacity(paths.len());
        for batch in paths.chunks(ARGS_PER_CALL) {
            let mut cmd = Command::new("nix");
            cmd.args([
                "--extra-experimental-features",
                "nix-command",
                "path-info",
                "--json",
                "--option",
                "substitute",
                "false",
            ]);
            cmd.args(batch.iter().map(|p| p.to_absolute(&self.store_dir)));
            let text = run(cmd, "nix", "nix path-info --json").await?;
            out.extend(path_info::parse(&self.store_dir, &text)?);
        }
        Ok(out)
    }

    /// Starts `nix-store --dump PATH`, whose stdout is the path's NAR.
    pub fn dump(&self, path: &StorePath) -> Result<NarDump, NixError> {
        let abs = path.to_absolute(&self.store_dir);
        let mut child = Command::new("nix-store")
            .arg("--dump")
            .arg(&abs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A failed or abandoned upload must not leave the dump running.
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| NixError::Spawn {
                program: "nix-store",
                source,
            })?;
        let stdout = child.stdout.take().ok_or_else(|| NixError::Output {
            command: format!("nix-store --dump {abs}"),
            reason: "no stdout pipe".into(),
        })?;
        let stderr = child.stderr.take().map(collect_stderr);
        Ok(NarDump {
            command: format!("nix-store --dump {abs}"),
            child,
            stdout,
            stderr,
        })
    }
}

/// A running `nix-store --dump`.
pub struct NarDump {
    command: String,
    child: Child,
    stdout: ChildStdout,
    stderr: Option<JoinHandle<String>>,
}

/// Set when a dump failed, so an upload error can be blamed on the local
/// side (and not retried) rather than on the network.
#[derive(Debug, Clone, Default)]
pub struct DumpFailure(Arc<OnceLock<String>>);

impl DumpFailure {
    /// The failure, if the dump failed.
    pub fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }

    fn set(&self, message: String) {
        let _ = self.0.set(message);
    }
}

impl NarDump {
    /// The NAR as a byte stream. At the end of stdout it waits for the
    /// process: a non-zero exit becomes a stream error (so the request
    /// fails instead of completing a truncated body) and is recorded in the
    /// returned [`DumpFailure`].
    pub fn into_stream(
        self,
    ) -> (
        impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
        DumpFailure,
    ) {
        let failure = DumpFailure::default();
        let (stdout, end) = self.into_reader();
        let on_read_error = failure.clone();
        let read_command = end.command.clone();
        let data = ReaderStream::with_capacity(stdout, DUMP_CHUNK).map(move |r| {
            r.inspect_err(|e| on_read_error.set(format!("reading `{read_command}`: {e}")))
        });
        let on_exit = failure.clone();
        let tail = stream::once(async move {
            let message = end.wait().await.err()?;
            on_exit.set(message.clone());
            Some(Err(std::io::Error::other(message)))
        })
        .filter_map(std::future::ready);
        (data.chain(tail), failure)
    }

    /// The NAR as the pipe itself, for a consumer that reads it into
    /// buffers of its own (the chunker: the kernel copies the NAR straight
    /// into its window), and the process, to [`DumpEnd::wait`] for after
    /// the last byte.
    pub fn into_reader(self) -> (ChildStdout, DumpEnd) {
        let NarDump {
            command,
            child,
            stdout,
            stderr,
        } = self;
        (
            stdout,
            DumpEnd {
                command,
                child,
                stderr,
            },
        )
    }
}

/// The process of a [`NarDump`] read through its pipe; dropping it kills
/// the process.
pub struct DumpEnd {
    command: String,
    child: Child,
    stderr: Option<JoinHandle<String>>,
}

impl DumpEnd {
    /// Waits for the process: a non-zero exit is the error, with its
    /// stderr.
    pub async fn wait(mut self) -> Result<(), String> {
        let status = self.child.wait().await;
        let stderr = match self.stderr {
            Some(task) => task.await.unwrap_or_default(),
            None => String::new(),
        };
        let command = &self.command;
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("`{command}` failed ({s}): {}", stderr.trim())),
            Err(e) => Err(format!("waiting for `{command}`: {e}")),
        }
    }
}

/// Reads a child's stderr in the background, keeping the first
/// [`STDERR_LIMIT`] bytes, so a chatty tool can never block on a full pipe.
fn collect_stderr(mut pipe: tokio::process::ChildStderr) -> JoinHandle<String> {
    tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = STDERR_LIMIT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

/// Runs a command to completion and returns its stdout as text.
async fn run(mut cmd: Command, program: &'static str, label: &str) -> Result<String, NixError> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| NixError::Spawn { program, source })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(NixError::Failed {
            command: label.to_owned(),
            status: output.status,
            stderr: stderr.trim().chars().take(STDERR_LIMIT).collect(),
        });
    }
    String::from_utf8(output.stdout).map_err(|_| NixError::Output {
        command: label.to_owned(),
        reason: "not UTF-8".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nix() -> Nix {
        Nix {
            store_dir: StoreDir::default(),
        }
    }

    #[test]
    fn resolves_store_paths_and_files_inside_them() {
        let p = nix()
            .resolve_path(Path::new(
                "/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10/bin/hello",
            ))
            .unwrap();
        assert_eq!(p.to_string(), "xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10");
    }

    #[test]
    fn follows_symlinks_outside_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("result");
        std::os::unix::fs::symlink(
            "/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10",
            &link,
        )
        .unwrap();
        let hop = dir.path().join("hop");
        std::os::unix::fs::symlink("result", &hop).unwrap();
        let p = nix().resolve_path(&hop).unwrap();
        assert_eq!(p.name.as_str(), "hello-2.10");
    }

    #[test]
    fn rejects_paths_outside_the_store() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            nix().resolve_path(dir.path()),
            Err(NixError::NotInStore { .. })
        ));
        assert!(matches!(
            nix().resolve_path(Path::new("/nix/store/not-a-store-path")),
            Err(NixError::NotInStore { .. })
        ));
        assert!(matches!(
            nix().resolve_path(&dir.path().join("missing")),
            Err(NixError::Resolve { .. })
        ));
    }

    /// A dump read through its pipe reports the process's failure, with
    /// its stderr, once the pipe is drained (what a chunk-level push
    /// checks after the last chunk).
    #[tokio::test]
    async fn a_failed_dump_read_as_a_pipe_reports_its_error() {
        use tokio::io::AsyncReadExt;
        let missing: StorePath = "00000000000000000000000000000000-absent".parse().unwrap();
        let (mut pipe, end) = nix().dump(&missing).unwrap().into_reader();
        let mut out = Vec::new();
        pipe.read_to_end(&mut out).await.unwrap();
        let err = end.wait().await.expect_err("nix-store fails");
        assert!(
            err.contains("nix-store --dump") && err.contains("failed"),
            "{err}"
        );
    }
}
