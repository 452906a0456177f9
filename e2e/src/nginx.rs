//! Debian's nginx as a caching reverse proxy in front of Larder, configured
//! as operators do (`proxy_cache`, `proxy_cache_valid 200 10m`), in a
//! temporary prefix, one process, loopback only. Its access log records the
//! cache status of every request (`$upstream_cache_status`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::server::free_port;
use crate::wait;

/// Where Debian installs nginx (`nginx-light`).
const NGINX: &str = "/usr/sbin/nginx";

/// True if nginx is installed; prints why a test skips otherwise.
pub fn nginx_available(test: &str) -> bool {
    let ok = Path::new(NGINX).is_file();
    if !ok {
        eprintln!("skipping {test}: {NGINX} is missing (apt-get install nginx-light)");
    }
    ok
}

/// A running nginx; stopped (killed) when dropped.
pub struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One access-log line: `$request_uri $status $upstream_cache_status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Request target.
    pub uri: String,
    /// Status sent to the client.
    pub status: u16,
    /// `HIT`, `MISS`, `BYPASS`, `EXPIRED`, … or `-` (not cacheable).
    pub cache: String,
}

impl Nginx {
    /// Starts nginx proxying everything to `upstream` through a
    /// `proxy_cache` with `proxy_cache_valid 200 10m`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("larder-nginx-").tempdir()?;
        let addr = free_port()?;
        let d = dir.path().display();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 256; }}
http {{
    log_format cachelog '$request_uri $status $upstream_cache_status';
    access_log {d}/access.log cachelog;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    proxy_cache_path {d}/cache keys_zone=larder:10m max_size=2g inactive=60m use_temp_path=off;
    server {{
        listen {addr};
        client_max_body_size 0;
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_cache larder;
            proxy_cache_valid 200 10m;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"#
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let log = std::fs::File::create(dir.path().join("stderr.log"))?;
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting nginx")?;
        let child = std::sync::Mutex::new(child);
        let ready = wait::until(
            "nginx to listen",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || async {
                let exited = child
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .try_wait()?;
                if let Some(status) = exited {
                    anyhow::bail!("nginx exited with {status}");
                }
                Ok(tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()))
            },
        )
        .await;
        let child = child
            .into_inner()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let nginx = Self { child, addr, dir };
        ready.map_err(|e| e.context(nginx.logs()))?;
        Ok(nginx)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The access log so far.
    pub fn accesses(&self) -> Vec<Access> {
        std::fs::read_to_string(self.path("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some(Access {
                    uri: f.next()?.to_owned(),
                    status: f.next()?.parse().ok()?,
                    cache: f.next().unwrap_or("-").to_owned(),
                })
            })
            .collect()
    }

    /// nginx's error log and stderr, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "{}\n{}",
            crate::log_tail(&self.path("error.log"), 4000),
            crate::log_tail(&self.path("stderr.log"), 4000)
        )
    }
}
