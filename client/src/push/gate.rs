//! The gate a chunk-level push's commit waits at: open once every
//! reference of the path is in the cache, so the cache never serves a path
//! whose closure is incomplete (docs/architecture.md "Chunk-level push").

use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::error::UploadError;

/// Opens when every reference of a path is in the cache: a commit waits
/// for it, so the cache never serves a path whose closure is incomplete.
#[derive(Debug)]
pub struct Gate {
    wait: Option<oneshot::Receiver<()>>,
    /// The path's turn to cut and send, given back when it starts waiting.
    turn: Option<OwnedSemaphorePermit>,
}

impl Gate {
    /// A gate that is open already.
    pub fn open() -> Self {
        Self {
            wait: None,
            turn: None,
        }
    }

    /// A gate that opens when `rx` hears, and fails when its sender is
    /// dropped (a reference failed).
    pub fn new(rx: oneshot::Receiver<()>) -> Self {
        Self {
            wait: Some(rx),
            turn: None,
        }
    }

    /// Holds `turn` (one of a few paths cutting and sending at once) until
    /// the path waits for its gate: the earliest paths finish their chunks
    /// first, so their commits start early and overlap the later paths'
    /// work instead of all paths sharing the cores to the end.
    pub fn with_turn(mut self, turn: OwnedSemaphorePermit) -> Self {
        self.turn = Some(turn);
        self
    }

    /// Gives the turn back early: the path has nothing left to cut or send.
    pub fn release_turn(&mut self) {
        self.turn = None;
    }

    /// Waits until the gate is open.
    pub async fn wait(&mut self) -> Result<(), UploadError> {
        self.turn = None;
        if let Some(rx) = self.wait.as_mut() {
            rx.await.map_err(|_| UploadError::ReferenceFailed)?;
            self.wait = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn push_gate_opens_fails_and_gives_back_the_turn() {
        let turns = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let (tx, rx) = oneshot::channel();
        let turn = turns.clone().acquire_owned().await.unwrap();
        let mut gate = Gate::new(rx).with_turn(turn);
        assert_eq!(turns.available_permits(), 0);
        tx.send(()).unwrap();
        gate.wait().await.unwrap();
        assert_eq!(turns.available_permits(), 1, "waiting gives the turn back");
        gate.wait().await.unwrap();

        let (tx, rx) = oneshot::channel::<()>();
        let mut gate = Gate::new(rx);
        drop(tx);
        assert!(matches!(
            gate.wait().await,
            Err(UploadError::ReferenceFailed)
        ));
        Gate::open().wait().await.unwrap();
    }
}
