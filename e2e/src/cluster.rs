//! The compose topology as real processes: PostgreSQL and the S3 server in
//! the test's namespace (the "database host"), and `larder-api` replicas
//! and `larder-worker`s each on a host of its own ([`crate::netns`]),
//! reaching PostgreSQL and S3 through [`TcpForwarder`]s on their gateway.
//!
//! Nodes share nothing on disk: each has a private directory (config,
//! key-encryption key, `TMPDIR`, log) that the other nodes' processes
//! cannot see (an empty tmpfs covers it in their mount namespaces), and
//! staging lives in the bucket, as docs/operations.md recommends for
//! replicas on several hosts. The
//! operator's `larder-admin` runs in the test's namespace on a config of
//! its own; [`Node::admin`] runs it on a node instead.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::{CliOutput, output};
use crate::netns::{Host, hosts};
pub use crate::node_config::{ClusterSettings, S3Bucket};
use crate::node_config::{PG_ADDR, write_node_config};
use crate::server::{child_env, free_port};
use crate::tcp_forward::TcpForwarder;
use crate::{bin_path, log_tail};

/// How long a node may take to answer its readiness probe.
const READY_LIMIT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(100);

/// What a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `larder-api -f CONFIG --listen ADDR`, no in-process workers.
    Api,
    /// `larder-worker -f CONFIG`, `/metrics` on `[worker] metrics-listen`.
    Worker,
}

/// One node: a process on its own host, restartable on the same address.
pub struct Node {
    name: String,
    role: Role,
    host: Host,
    dir: PathBuf,
    /// The cluster's directory: every entry but `dir` is hidden from the
    /// node.
    root: PathBuf,
    /// The API's listener, or the worker's `/metrics`.
    addr: SocketAddr,
    child: Option<Child>,
    starts: u32,
    /// Kept for the node's life (relays to PostgreSQL and S3).
    _forwarders: Vec<TcpForwarder>,
}

impl Node {
    /// The node's name (`api-a`, `worker-1`, …; also its `HOSTNAME`, so
    /// worker names in leases and the audit trail start with it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it runs.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// `http://ADDR:PORT`: the API, or the worker's `/metrics` server.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its private config file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// A command running `program` on the node's host, the other nodes'
    /// directories (and the operator's) hidden.
    fn command(&self, program: &Path) -> anyhow::Result<std::process::Command> {
        let hide: Vec<PathBuf> = std::fs::read_dir(&self.root)?
            .map(|e| e.map(|e| e.path()))
            .filter(|p| p.as_ref().map_or(true, |p| *p != self.dir))
            .collect::<Result<_, _>>()?;
        let mut cmd = self.host.command(program, &hide);
        child_env(&mut cmd);
        cmd.env("TMPDIR", self.dir.join("tmp"));
        Ok(cmd)
    }

    /// Whether a process on this node can read `path` (`cat`).
    pub async fn can_read(&self, path: &Path) -> anyhow::Result<bool> {
        let mut cmd = self.command(Path::new("/bin/cat"))?;
        cmd.arg(path).stdout(Stdio::null()).stderr(Stdio::null());
        Ok(tokio::process::Command::from(cmd).status().await?.success())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}-{}.log", self.name, self.starts))
    }

    /// The current start's log (tail), for error messages.
    pub fn log(&self) -> String {
        log_tail(&self.log_path(), 6000)
    }

    /// Starts the process (after creation or [`Self::kill_9`]), on the
    /// same address as before, and waits until it answers.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "{} already running", self.name);
        self.starts += 1;
        let file = std::fs::File::create(self.log_path())?;
        let mut cmd = match self.role {
            Role::Api => {
                let mut cmd = self.command(&bin_path("larder-api")?)?;
                cmd.arg("-f")
                    .arg(self.config())
                    .arg("--listen")
                    .arg(self.addr.to_string());
                cmd
            }
            Role::Worker => {
                let mut cmd = self.command(&bin_path("larder-worker")?)?;
                cmd.arg("-f").arg(self.config());
                cmd
            }
        };
        cmd.env("HOSTNAME", &self.name)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        self.child = Some(
            cmd.spawn()
                .with_context(|| format!("spawning {}", self.name))?,
        );
        self.wait_ready().await
    }

    /// Polls `/_ready` (API) or `/metrics` (worker) until 200; fails if
    /// the process exits first.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let path = match self.role {
            Role::Api => "/_ready",
            Role::Worker => "/metrics",
        };
        let url = format!("{}{path}", self.url());
        let http = reqwest::Client::new();
        let start = Instant::now();
        loop {
            self.ensure_running()?;
            if let Ok(resp) = http.get(&url).timeout(Duration::from_secs(5)).send().await
                && resp.status() == reqwest::StatusCode::OK
            {
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < READY_LIMIT,
                "{} not ready after {READY_LIMIT:?}\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Fails, with the log, if the process has exited or was killed.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        let child = self
            .child
            .as_mut()
            .with_context(|| format!("{} is not running", self.name))?;
        if let Some(status) = child.try_wait()? {
            self.child = None;
            anyhow::bail!("{} exited ({status})\n{}", self.name, self.log());
        }
        Ok(())
    }

    /// SIGKILL, no shutdown: the crash the cluster must survive. Waits for
    /// the exit.
    pub fn kill_9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// The worker's `/metrics` text (a worker node only).
    pub async fn metrics(&self) -> anyhow::Result<String> {
        anyhow::ensure!(
            self.role == Role::Worker,
            "{} has no worker metrics",
            self.name
        );
        Ok(reqwest::get(format!("{}/metrics", self.url()))
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// `larder-admin -f <this node's config> ARGS…` run on this node's
    /// host, any exit status.
    pub async fn admin(&self, args: &[&str]) -> anyhow::Result<CliOutput> {
        let std_cmd = {
            let mut cmd = self.command(&bin_path("larder-admin")?)?;
            cmd.arg("-f")
                .arg(self.config())
                .args(args)
                .env("USER", &self.name);
            cmd
        };
        output(tokio::process::Command::from(std_cmd)).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.kill_9();
    }
}

/// Two API replicas and three workers (the compose file's shape), each on
/// its own host, over one database and one bucket prefix.
pub struct Cluster {
    /// `api-a`, `api-b`.
    pub apis: Vec<Node>,
    /// `worker-1`, `worker-2`, `worker-3`.
    pub workers: Vec<Node>,
    /// The operator's config (in the test's namespace).
    operator_config: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Creates the hosts and node directories and starts every node: the
    /// replicas together (both migrate the fresh database), then the
    /// workers. Set `LARDER_E2E_KEEP=1` to keep the directory (logs).
    pub async fn start(settings: &ClusterSettings<'_>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("larder-e2e-cluster-")
            .tempdir()?;
        let prefix = format!("cluster-{:016x}", crate::tree::random_seed());
        let operator_config = dir.path().join("operator").join("config.toml");
        write_node_config(
            &operator_config,
            settings,
            &prefix,
            PG_ADDR,
            settings.s3.endpoint,
            None,
        )?;

        let names = ["api-a", "api-b", "worker-1", "worker-2", "worker-3"];
        let mut nodes = Vec::new();
        for (name, host) in names.into_iter().zip(hosts(names.len())?) {
            let role = if name.starts_with("api") {
                Role::Api
            } else {
                Role::Worker
            };
            nodes.push(new_node(dir.path(), name, role, host, settings, &prefix).await?);
        }
        let workers = nodes.split_off(2);
        let mut cluster = Self {
            apis: nodes,
            workers,
            operator_config,
            dir: Some(dir),
        };
        let (a, b) = cluster.apis.split_at_mut(1);
        tokio::try_join!(a[0].start(), b[0].start())?;
        for worker in &mut cluster.workers {
            worker.start().await?;
        }
        Ok(cluster)
    }

    /// The operator's config file (the database and bucket reached
    /// directly from the test's namespace).
    pub fn operator_config(&self) -> &Path {
        &self.operator_config
    }

    /// True if the nodes run in network namespaces of their own.
    pub fn isolated(&self) -> bool {
        self.apis
            .iter()
            .chain(&self.workers)
            .all(|n| n.host().is_isolated())
    }

    /// Every node's log tail, for error messages.
    pub fn logs(&self) -> String {
        self.apis
            .iter()
            .chain(&self.workers)
            .map(Node::log)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Processes first, then their hosts (a namespace with a process in
        // it outlives `ip netns delete`).
        for node in self.apis.iter_mut().chain(&mut self.workers) {
            let _ = node.kill_9();
        }
        self.apis.clear();
        self.workers.clear();
        if std::env::var_os("LARDER_E2E_KEEP").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("LARDER_E2E_KEEP: kept {}", dir.keep().display());
        }
    }
}

/// A node's private directory (mode 0700: config, KEK, `tmp/`, logs), its
/// forwarders to PostgreSQL and S3 on its gateway, and its config.
async fn new_node(
    root: &Path,
    name: &str,
    role: Role,
    host: Host,
    settings: &ClusterSettings<'_>,
    prefix: &str,
) -> anyhow::Result<Node> {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("tmp"))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let (pg, s3, forwarders) = if host.is_isolated() {
        let pg = TcpForwarder::start(host.gateway(), PG_ADDR).await?;
        let s3 = TcpForwarder::start(host.gateway(), settings.s3.endpoint).await?;
        (pg.addr(), s3.addr(), vec![pg, s3])
    } else {
        (PG_ADDR, settings.s3.endpoint, Vec::new())
    };
    // A host of its own has its own ports; on loopback take free ones.
    let port = match (host.is_isolated(), role) {
        (true, Role::Api) => 8080,
        (true, Role::Worker) => 9101,
        (false, _) => free_port()?.port(),
    };
    let addr = SocketAddr::new(host.addr(), port);
    let metrics = (role == Role::Worker).then_some(addr);
    write_node_config(&dir.join("config.toml"), settings, prefix, pg, s3, metrics)?;
    Ok(Node {
        name: name.to_owned(),
        role,
        host,
        dir,
        root: root.to_owned(),
        addr,
        child: None,
        starts: 0,
        _forwarders: forwarders,
    })
}
