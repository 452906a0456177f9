//! Real `larder-api` and `larder-worker` processes.
//!
//! [`Server`] runs the embedded default (docs/protocol.md): `LARDER_DATA_DIR` is a
//! temporary directory, `LARDER_LISTEN` a free loopback port. Output goes to
//! files under the temporary directory (`logs/`), so after `GET /_ready`
//! answers 200 everything printed before the listener was bound (the root
//! token) is already on disk: no reader thread, no race.
//!
//! Set `LARDER_E2E_KEEP=1` to keep the temporary directory (data and logs)
//! after the test; its path is printed.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::{bin_path, log_tail};

/// How long a start may take before `/_ready` answers 200.
const READY_LIMIT: Duration = Duration::from_secs(90);
/// How long a SIGTERM'd server may take to exit before it gets SIGKILL.
const STOP_LIMIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(100);

/// How to start the embedded default.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerOptions {
    /// Overrides `[worker] embedded` in the generated config (`Some(0)`: no
    /// in-process workers, so uploads stay staged until a [`Worker`] runs).
    /// The server starts once to generate the config, stops, and restarts.
    pub embedded_workers: Option<usize>,
    /// Sets `[http] narinfo-max-age` (seconds) in the generated config, the
    /// same way (tests of caching proxies use a short one).
    pub narinfo_max_age: Option<u64>,
    /// Sets `[staging] max-nars` (the staging quota) the same way.
    pub staging_max_nars: Option<u64>,
    /// Sets `[chunk-push] enabled = false` the same way (404, as Attic).
    pub no_chunk_push: bool,
}

impl ServerOptions {
    /// No in-process workers.
    pub fn without_workers() -> Self {
        Self {
            embedded_workers: Some(0),
            narinfo_max_age: None,
            staging_max_nars: None,
            no_chunk_push: false,
        }
    }
}

/// A running `larder-api` over the embedded default in a temporary directory.
pub struct Server {
    root: Option<tempfile::TempDir>,
    child: Option<Child>,
    addr: SocketAddr,
    token: String,
    starts: u32,
    http: reqwest::Client,
}

/// What one start of the server printed.
#[derive(Debug, Clone)]
pub struct StartOutput {
    /// Everything on stdout once the server was ready.
    pub stdout: String,
    /// The root token of the `larder login` line, if one was printed.
    pub token: Option<String>,
}

impl Server {
    /// Starts the embedded default in a fresh data directory and reads the
    /// root token it prints on first start.
    pub async fn start_embedded(opts: ServerOptions) -> anyhow::Result<Self> {
        let root = tempfile::Builder::new().prefix("larder-e2e-").tempdir()?;
        std::fs::create_dir_all(root.path().join("logs"))?;
        let mut server = Self {
            root: Some(root),
            child: None,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            token: String::new(),
            starts: 0,
            http: reqwest::Client::new(),
        };
        let first = server.launch().await?;
        server.token = first.token.with_context(|| {
            format!(
                "first start printed no `larder login … --set-default` line; stdout:\n{}",
                first.stdout
            )
        })?;
        let extra = [
            (opts.narinfo_max_age).map(|s| format!("\n[http]\nnarinfo-max-age = {s}\n")),
            (opts.staging_max_nars).map(|n| format!("\n[staging]\nmax-nars = {n}\n")),
            (opts.no_chunk_push).then(|| "\n[chunk-push]\nenabled = false\n".into()),
        ];
        let extra: String = extra.into_iter().flatten().collect();
        if opts.embedded_workers.is_some() || !extra.is_empty() {
            server.stop().await?;
            if let Some(n) = opts.embedded_workers {
                server.set_embedded_workers(n)?;
            }
            let path = server.config_path();
            let text = std::fs::read_to_string(&path)? + &extra;
            std::fs::write(&path, text)?;
            let second = server.launch().await?;
            anyhow::ensure!(
                second.token.is_none(),
                "a restart printed a root token again"
            );
        }
        Ok(server)
    }

    /// `http://127.0.0.1:PORT` (changes on restart: every start takes a free port).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The root token printed on first start.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The temporary directory holding `data/` and `logs/`.
    pub fn root(&self) -> &Path {
        self.root.as_ref().expect("root lives until drop").path()
    }

    /// `$LARDER_DATA_DIR`.
    pub fn data_dir(&self) -> PathBuf {
        self.root().join("data")
    }

    /// The generated `config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.data_dir().join("config.toml")
    }

    /// Local storage root of the embedded default.
    pub fn storage_dir(&self) -> PathBuf {
        self.data_dir().join("storage")
    }

    /// Directory of the process logs.
    pub fn log_dir(&self) -> PathBuf {
        self.root().join("logs")
    }

    fn stdout_path(&self) -> PathBuf {
        self.log_dir().join(format!("api-{}.stdout", self.starts))
    }

    fn stderr_path(&self) -> PathBuf {
        self.log_dir().join(format!("api-{}.stderr", self.starts))
    }

    /// The current start's stderr (the server's log), for error messages.
    pub fn log(&self) -> String {
        log_tail(&self.stderr_path(), 8000)
    }

    /// A client authenticated with the root token.
    pub fn client(&self) -> crate::Client {
        crate::Client::new(&self.url(), &self.token)
    }

    /// Stops the server (SIGTERM, then SIGKILL after a bound) and starts it
    /// again on the same data directory and a new port.
    pub async fn restart(&mut self) -> anyhow::Result<StartOutput> {
        self.stop().await?;
        self.launch().await
    }

    /// SIGKILL, no graceful shutdown: the crash in-flight uploads must
    /// survive. Waits for the exit.
    pub fn kill_9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the server again (after [`Self::stop`] or [`Self::kill_9`]) on
    /// the same data directory and the same port, as a supervisor would: a
    /// client keeps its endpoint across the restart.
    pub async fn start_again(&mut self) -> anyhow::Result<StartOutput> {
        self.launch_on(Some(self.addr)).await
    }

    /// `staging/` of the local storage: uploads in flight are `.tmp-*`
    /// files there until they are complete.
    pub fn staging_dir(&self) -> PathBuf {
        self.storage_dir().join("staging")
    }

    /// The current start's whole log (stderr).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.stderr_path()).unwrap_or_default()
    }

    /// Stops the server, replaces the generated config's `[storage]` table
    /// (and its subtables) by `section`, e.g. an S3 bucket, and starts again.
    pub async fn switch_storage(&mut self, section: &str) -> anyhow::Result<StartOutput> {
        self.stop().await?;
        let path = self.config_path();
        let text = std::fs::read_to_string(&path)?;
        let mut in_storage = false;
        let mut out = String::with_capacity(text.len() + section.len());
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with('[') {
                in_storage = t == "[storage]" || t.starts_with("[storage.");
            }
            if !in_storage {
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push_str(section);
        // Writing an existing file keeps its 0600 mode.
        std::fs::write(&path, out)?;
        self.launch().await
    }

    /// Rewrites `[worker] embedded` in the generated config (server stopped).
    fn set_embedded_workers(&self, n: usize) -> anyhow::Result<()> {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path)?;
        let mut in_worker = false;
        let mut replaced = false;
        let mut out = String::with_capacity(text.len());
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with('[') {
                in_worker = t == "[worker]";
            }
            if in_worker && t.split('=').next().is_some_and(|k| k.trim() == "embedded") {
                out.push_str(&format!("embedded = {n}\n"));
                replaced = true;
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        anyhow::ensure!(
            replaced,
            "no `[worker] embedded` line in {}:\n{text}",
            path.display()
        );
        // Writing an existing file keeps its 0600 mode.
        std::fs::write(&path, out)?;
        Ok(())
    }

    async fn launch(&mut self) -> anyhow::Result<StartOutput> {
        self.launch_on(None).await
    }

    /// Starts on `addr`, or on a free port.
    async fn launch_on(&mut self, addr: Option<SocketAddr>) -> anyhow::Result<StartOutput> {
        anyhow::ensure!(self.child.is_none(), "server already running");
        self.starts += 1;
        self.addr = match addr {
            Some(addr) => addr,
            None => free_port()?,
        };
        let mut cmd = Command::new(bin_path("larder-api")?);
        child_env(&mut cmd);
        cmd.env("LARDER_DATA_DIR", self.data_dir())
            .env("LARDER_LISTEN", self.addr.to_string())
            .current_dir(self.root())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.stdout_path())?)
            .stderr(std::fs::File::create(self.stderr_path())?);
        let child = cmd.spawn().context("spawning larder-api")?;
        self.child = Some(child);
        self.wait_ready().await?;
        let stdout = std::fs::read_to_string(self.stdout_path())?;
        let token = parse_login_token(&stdout);
        Ok(StartOutput { stdout, token })
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/_ready", self.url());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().transpose()) {
                let status = status?;
                self.child = None;
                anyhow::bail!(
                    "larder-api exited during start-up ({status})\n{}",
                    self.log()
                );
            }
            if let Ok(resp) = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                && resp.status() == reqwest::StatusCode::OK
            {
                return Ok(());
            }
            if start.elapsed() > READY_LIMIT {
                anyhow::bail!("larder-api not ready after {READY_LIMIT:?}\n{}", self.log());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops the server: SIGTERM (graceful shutdown), SIGKILL after a bound.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal(&child, libc::SIGTERM);
        let start = Instant::now();
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if start.elapsed() > STOP_LIMIT {
                let _ = child.kill();
                child.wait()?;
                anyhow::bail!(
                    "larder-api ignored SIGTERM for {STOP_LIMIT:?}\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("LARDER_E2E_KEEP").is_some()
            && let Some(root) = self.root.take()
        {
            eprintln!("LARDER_E2E_KEEP: kept {}", root.keep().display());
        }
    }
}

/// A loopback address whose port was free a moment ago (bind :0, drop).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?)
}

/// The token of the `    larder login local http://… <TOKEN> --set-default` line.
pub fn parse_login_token(stdout: &str) -> Option<String> {
    stdout.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["larder", "login", _name, _endpoint, token, "--set-default"] => {
                Some((*token).to_owned())
            }
            _ => None,
        }
    })
}

/// Children see no `LARDER_*` variable of the test's environment except the
/// log filter: each test sets exactly what it means. Logs are plain text.
pub(crate) fn child_env(cmd: &mut Command) {
    cmd.env("NO_COLOR", "1");
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str()
            && k.starts_with("LARDER_")
            && k != "LARDER_LOG"
        {
            cmd.env_remove(k);
        }
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain kill(2) on our own child, which has not been reaped.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}
