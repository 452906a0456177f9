//! SIGINT and SIGTERM for the long-running commands (`queue drain`,
//! `watch-store`).
//!
//! The first signal asks for a clean stop: the push in flight finishes (its
//! retries are bounded), nothing new starts, and the command exits 0. A
//! second signal abandons the push in flight. Either way nothing is lost:
//! an entry leaves the queue only after its push succeeded.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Signals received so far, shared by the tasks of one command.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<u32>,
}

impl Shutdown {
    /// Starts counting SIGINT and SIGTERM (they no longer kill the process).
    pub fn install() -> std::io::Result<Self> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (tx, rx) = watch::channel(0u32);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                tx.send_modify(|n| *n += 1);
            }
        });
        Ok(Self { rx })
    }

    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        *self.rx.borrow() >= 1
    }

    /// Resolves once a stop is asked for.
    pub async fn stop_requested(&self) {
        self.reached(1).await;
    }

    /// Resolves on the second signal: abandon the work in flight.
    pub async fn forced(&self) {
        self.reached(2).await;
    }

    async fn reached(&self, n: u32) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|got| *got >= n).await.is_err() {
            // The signal task is gone (runtime shutting down): never.
            std::future::pending::<()>().await;
        }
    }
}
