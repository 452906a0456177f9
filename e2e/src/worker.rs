//! A real `larder-worker` process beside a [`Server`]'s API (the production
//! shape: API and workers as separate processes sharing database and storage).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use anyhow::Context;

use crate::server::{Server, child_env};
use crate::{bin_path, log_tail};

/// A running `larder-worker -f CONFIG`; killed on drop.
pub struct Worker {
    child: Mutex<Option<Child>>,
    log: PathBuf,
}

impl Worker {
    /// Starts a worker on the server's config, logging to the server's log dir.
    pub fn start(server: &Server) -> anyhow::Result<Self> {
        let n = std::fs::read_dir(server.log_dir())?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("worker-"))
            .count();
        let log = server.log_dir().join(format!("worker-{}.log", n + 1));
        Self::start_with(&server.config_path(), log)
    }

    /// Starts `larder-worker -f config`, stdout and stderr to `log`.
    pub fn start_with(config: &Path, log: PathBuf) -> anyhow::Result<Self> {
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin_path("larder-worker")?);
        child_env(&mut cmd);
        cmd.arg("-f")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = cmd.spawn().context("spawning larder-worker")?;
        Ok(Self {
            child: Mutex::new(Some(child)),
            log,
        })
    }

    /// The worker's output so far (tail), for error messages.
    pub fn log(&self) -> String {
        log_tail(&self.log, 8000)
    }

    /// The whole log file.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails if the worker has exited.
    pub fn ensure_running(&self) -> anyhow::Result<()> {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let child = guard.as_mut().context("worker was killed")?;
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("larder-worker exited ({status})\n{}", self.log());
        }
        Ok(())
    }

    /// SIGKILL: the crash the job design must survive. Waits for the exit.
    pub fn kill_9(&self) -> anyhow::Result<()> {
        let taken = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = taken {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let taken = self
            .child
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut child) = taken {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
