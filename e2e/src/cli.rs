//! The `larder` and `larder-admin` binaries, run as a user and an operator
//! run them (docs/protocol.md, "`larder`" and "`larder-admin`").
//!
//! A [`LarderCli`] is one user: its own `XDG_CONFIG_HOME` (so its
//! `larder/config.toml` holds only the servers it logged in to), and a fresh
//! `XDG_CACHE_HOME` for every run (the client runs `nix-store` and `nix
//! path-info`, and every Nix invocation gets its own narinfo cache). Output is captured
//! through pipes: stdout is never a terminal, as in CI.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;

use crate::bin_path;

/// Bound on any one CLI run (a push retries a dead server for about 7 s).
pub const CLI_LIMIT: Duration = Duration::from_secs(180);

/// One user of the `larder` CLI.
pub struct LarderCli {
    dir: tempfile::TempDir,
    runs: AtomicUsize,
}

impl LarderCli {
    /// A user with an empty configuration.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("larder-e2e-cli-")
            .tempdir()?;
        std::fs::create_dir(dir.path().join("config"))?;
        Ok(Self {
            dir,
            runs: AtomicUsize::new(0),
        })
    }

    /// Scratch directory (nix.conf, netrc, …).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `$XDG_CONFIG_HOME` of this user.
    pub fn config_home(&self) -> PathBuf {
        self.dir().join("config")
    }

    /// `$XDG_STATE_HOME` of this user (where `larder queue` keeps its file).
    pub fn state_home(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// `larder ARGS…` with this user's configuration and state, a fresh
    /// `XDG_CACHE_HOME`, and no `LARDER_*`, `ATTIC_TOKEN` or `NIX_CONFIG`
    /// from the test's environment.
    pub fn command(&self, args: &[&str]) -> anyhow::Result<tokio::process::Command> {
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        let cache = self.dir().join(format!("cache-{run}"));
        std::fs::create_dir(&cache)?;
        let mut cmd = tokio::process::Command::new(bin_path("larder")?);
        clean_env(&mut cmd);
        cmd.env("XDG_CONFIG_HOME", self.config_home())
            .env("XDG_STATE_HOME", self.state_home())
            .env("XDG_CACHE_HOME", cache)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// Runs `larder ARGS…`; any exit status.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<CliOutput> {
        output(self.command(args)?).await
    }

    /// Runs `larder ARGS…` and requires exit status 0.
    pub async fn ok(&self, args: &[&str]) -> anyhow::Result<CliOutput> {
        self.run(args).await?.success()
    }

    /// `larder push TARGET PATHS…`, requiring exit status 0.
    pub async fn push(&self, target: &str, paths: &[String]) -> anyhow::Result<CliOutput> {
        self.ok(&push_args(&[], target, paths)).await
    }

    /// `larder login NAME ENDPOINT TOKEN`.
    pub async fn login(&self, name: &str, endpoint: &str, token: &str) -> anyhow::Result<()> {
        self.ok(&["login", name, endpoint, token]).await.map(drop)
    }
}

/// What a finished CLI run printed.
#[derive(Debug)]
pub struct CliOutput {
    /// The command line, for messages.
    pub line: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl CliOutput {
    /// Itself if the exit status is 0, else an error showing the output.
    pub fn success(self) -> anyhow::Result<Self> {
        anyhow::ensure!(self.status.success(), "{self}");
        Ok(self)
    }

    /// Checks that nothing redraws: no carriage return, no ANSI escape
    /// (what progress bars print on a terminal).
    pub fn ensure_plain(&self) -> anyhow::Result<()> {
        for (name, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            anyhow::ensure!(
                !text.contains('\r') && !text.contains('\x1b'),
                "{name} has a carriage return or an escape sequence, though it is not a terminal:\n{self}"
            );
        }
        Ok(())
    }

    /// The summary line of `larder push`.
    pub fn push_summary(&self) -> anyhow::Result<PushSummary> {
        PushSummary::find(&self.stdout).with_context(|| format!("no push summary line:\n{self}"))
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} exited with {}\nstdout:\n{}\nstderr:\n{}",
            self.line, self.status, self.stdout, self.stderr
        )
    }
}

/// The counts of `larder push`'s last line: `pushed N, already present N,
/// deduplicated N, failed N (B sent, B deduplicated)[ (skipped N available
/// upstream)]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushSummary {
    /// Uploaded.
    pub pushed: usize,
    /// Already in the cache.
    pub already_present: usize,
    /// Uploaded, NAR already stored.
    pub deduplicated: usize,
    /// Failed.
    pub failed: usize,
}

impl PushSummary {
    /// The last summary line of `stdout`, parsed.
    pub fn find(stdout: &str) -> Option<Self> {
        stdout.lines().rev().find_map(Self::parse_line)
    }

    fn parse_line(line: &str) -> Option<Self> {
        let line = line.split(" (").next()?;
        let mut s = Self::default();
        let mut seen = 0;
        for part in line.split(", ") {
            let (label, n) = part.trim().rsplit_once(' ')?;
            let n: usize = n.parse().ok()?;
            match label {
                "pushed" => s.pushed = n,
                "already present" => s.already_present = n,
                "deduplicated" => s.deduplicated = n,
                "failed" => s.failed = n,
                _ => return None,
            }
            seen += 1;
        }
        (seen == 4).then_some(s)
    }
}

/// Runs `cmd` to completion within [`CLI_LIMIT`], capturing its output.
pub async fn output(mut cmd: tokio::process::Command) -> anyhow::Result<CliOutput> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let line = format!("{:?}", cmd.as_std());
    // kill_on_drop: a timeout drops the child, which kills it.
    cmd.kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("spawning {line}"))?;
    let out = tokio::time::timeout(CLI_LIMIT, child.wait_with_output())
        .await
        .with_context(|| format!("{line} did not finish within {CLI_LIMIT:?}"))??;
    Ok(CliOutput {
        line,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `cmd` like [`output`], writing `input` to its stdin and then
/// closing it (end of input).
pub async fn output_with_stdin(
    mut cmd: tokio::process::Command,
    input: &str,
) -> anyhow::Result<CliOutput> {
    use tokio::io::AsyncWriteExt as _;

    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let line = format!("{:?}", cmd.as_std());
    let mut child = cmd.spawn().with_context(|| format!("spawning {line}"))?;
    let mut stdin = child.stdin.take().context("no stdin pipe")?;
    stdin.write_all(input.as_bytes()).await?;
    drop(stdin);
    let out = tokio::time::timeout(CLI_LIMIT, child.wait_with_output())
        .await
        .with_context(|| format!("{line} did not finish within {CLI_LIMIT:?}"))??;
    Ok(CliOutput {
        line,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `larder push FLAGS… TARGET PATHS…` as arguments.
pub fn push_args<'a>(flags: &[&'a str], target: &'a str, paths: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["push"];
    args.extend_from_slice(flags);
    args.push(target);
    args.extend(paths.iter().map(String::as_str));
    args
}

/// `larder-admin -f CONFIG ARGS…`, required to succeed; its stdout.
pub async fn admin(config: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new(bin_path("larder-admin")?);
    clean_env(&mut cmd);
    cmd.arg("-f")
        .arg(config)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    Ok(output(cmd).await?.success()?.stdout)
}

/// `larder-admin -f CONFIG make-token --sub SUB --validity 1d ARGS…`: the
/// token (the last non-empty stdout line).
pub async fn make_token(config: &Path, sub: &str, perms: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["make-token", "--sub", sub, "--validity", "1d"];
    args.extend_from_slice(perms);
    let out = admin(config, &args).await?;
    out.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
        .with_context(|| format!("make-token printed no token: {out:?}"))
}

/// The claims of a JWT (its payload, not verified).
pub fn jwt_claims(token: &str) -> anyhow::Result<serde_json::Value> {
    let payload = token
        .split('.')
        .nth(1)
        .with_context(|| format!("not a JWT: {token:.20}…"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .context("JWT payload is not base64url")?;
    serde_json::from_slice(&bytes).context("JWT payload is not JSON")
}

/// No `LARDER_*` (the log filter aside), `ATTIC_TOKEN` or `NIX_CONFIG` of
/// the test's environment reaches a CLI: each test sets what it means.
fn clean_env(cmd: &mut tokio::process::Command) {
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str()
            && ((k.starts_with("LARDER_") && k != "LARDER_LOG")
                || k == "ATTIC_TOKEN"
                || k == "NIX_CONFIG"
                || k == "NIX_USER_CONF_FILES")
        {
            cmd.env_remove(k);
        }
    }
}
