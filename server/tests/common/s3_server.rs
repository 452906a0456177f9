//! A SeaweedFS server of a test's own (`weed mini`, as scripts/s3-test-server
//! starts the shared one), for fault tests that stop and restart it. Loopback
//! only; data in the caller's directory, so a restart keeps the objects.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running (or stopped) private SeaweedFS.
pub struct S3Server {
    weed: PathBuf,
    identities: PathBuf,
    dir: PathBuf,
    /// The S3 port; the other components use fixed offsets from it.
    pub port: u16,
    child: Option<Child>,
}

impl S3Server {
    /// Starts one on `port` with data in `dir`; `None` (skip) when the test
    /// environment names no `weed` binary.
    pub async fn start(port: u16, dir: &Path) -> Option<Self> {
        let (Ok(weed), Ok(identities)) = (
            std::env::var("LARDER_TEST_S3_WEED"),
            std::env::var("LARDER_TEST_S3_IDENTITIES"),
        ) else {
            eprintln!("LARDER_TEST_S3_WEED unset: skipping (scripts/test-all sets it)");
            return None;
        };
        let mut server = Self {
            weed: weed.into(),
            identities: identities.into(),
            dir: dir.to_path_buf(),
            port,
            child: None,
        };
        server.restart().await;
        Some(server)
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the server on the same data and waits until it answers
    /// (bounded polling).
    pub async fn restart(&mut self) {
        self.stop();
        let p = self.port;
        let bucket = std::env::var("LARDER_TEST_S3_BUCKET").expect("LARDER_TEST_S3_BUCKET");
        let log_path = self.dir.join("weed.log");
        let log = std::fs::File::create(&log_path).expect("weed log");
        let child = Command::new(&self.weed)
            .arg("mini")
            .arg(format!("-dir={}", self.dir.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.port={p}"))
            .arg(format!("-master.port={}", p + 1000))
            .arg(format!("-volume.port={}", p + 1007))
            .arg(format!("-filer.port={}", p + 555))
            .arg(format!("-admin.port={}", p + 2))
            .args(["-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0"])
            .args(["-s3.port.lance=0", "-master.telemetry=false"])
            .arg(format!("-s3.config={}", self.identities.display()))
            .arg(format!("-bucket={bucket}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("weed log"))
            .stderr(log)
            .spawn()
            .expect("starting weed mini");
        self.child = Some(child);
        for _ in 0..240 {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains("running and ready")
                && tokio::net::TcpStream::connect(("127.0.0.1", p))
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.stop();
        panic!("weed mini did not start; see {}", log_path.display());
    }
}
