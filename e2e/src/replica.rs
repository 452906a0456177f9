//! The production shape (docs/operations.md): `larder-api -f CONFIG` replicas
//! over one PostgreSQL database, each with `[worker] embedded = 0`.
//!
//! [`PgDatabase`] is a fresh database on the test server (PostgreSQL at
//! 127.0.0.1:5432, user `postgres`, trust auth, as `scripts/test-all` sets
//! up), created and dropped with `psql`, so the harness needs no database
//! driver. [`ApiReplica`] is one `larder-api -f CONFIG --listen ADDR`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::server::{child_env, free_port};
use crate::{bin_path, log_tail, on_path};

/// The test PostgreSQL server.
pub const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
/// How long a replica may take before `/_ready` answers 200.
const READY_LIMIT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(100);

/// A database created for one test; dropped by [`PgDatabase::drop_now`]
/// (or, best effort, when the value is dropped after a failure).
pub struct PgDatabase {
    name: String,
    dropped: bool,
}

impl PgDatabase {
    /// `CREATE DATABASE <prefix>_<random>`.
    pub async fn create(prefix: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            on_path("psql"),
            "psql is not on PATH: these tests need PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth; scripts/test-all sets it up)"
        );
        let name = format!("{prefix}_{:016x}", crate::tree::random_seed());
        psql(&format!("CREATE DATABASE {name}"))
            .await
            .context("PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth)")?;
        Ok(Self {
            name,
            dropped: false,
        })
    }

    /// `postgres://postgres@127.0.0.1:5432/<name>`.
    pub fn url(&self) -> String {
        format!("{PG_SERVER}/{}", self.name)
    }

    /// Runs `sql` in this database; its rows, unaligned (`psql -At`).
    pub async fn query(&self, sql: &str) -> anyhow::Result<String> {
        let mut cmd = tokio::process::Command::new("psql");
        cmd.args(["-h", "127.0.0.1", "-U", "postgres", "-d", &self.name])
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-At", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        crate::nix::run(cmd).await
    }

    /// `DROP DATABASE … WITH (FORCE)` (connections of killed replicas may
    /// linger a moment).
    pub async fn drop_now(mut self) -> anyhow::Result<()> {
        self.dropped = true;
        psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .await
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if !self.dropped {
            let _ = Command::new("psql")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c"])
                .arg(format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs one SQL statement as `postgres` on the `postgres` database.
async fn psql(sql: &str) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new("psql");
    cmd.args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
        .args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    crate::nix::run(cmd).await.map(drop)
}

/// A running `larder-api -f CONFIG --listen ADDR` on a free loopback port;
/// killed on drop.
pub struct ApiReplica {
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
}

impl ApiReplica {
    /// Spawns the replica, logging to `log`. Call [`Self::wait_ready`] next
    /// (replicas may then start concurrently, as in a rolling deploy).
    pub fn spawn(config: &Path, log: PathBuf) -> anyhow::Result<Self> {
        let addr = free_port()?;
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin_path("larder-api")?);
        child_env(&mut cmd);
        cmd.arg("-f")
            .arg(config)
            .arg("--listen")
            .arg(addr.to_string())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = cmd.spawn().context("spawning larder-api -f")?;
        Ok(Self {
            child: Some(child),
            addr,
            log,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The replica's output so far (tail), for error messages.
    pub fn log(&self) -> String {
        log_tail(&self.log, 8000)
    }

    /// Polls `GET /_ready` until 200; fails if the process exits first.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
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
            if let Ok(resp) = http.get(&url).timeout(Duration::from_secs(5)).send().await
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
}

impl Drop for ApiReplica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
