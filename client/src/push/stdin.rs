//! `larder push --stdin`: paths arrive line by line, as a post-build hook
//! or `nix build --print-out-paths | larder push --stdin CACHE` produces
//! them, and are pushed as they come rather than after end of input.
//!
//! A line may hold several whitespace-separated paths (`$OUT_PATHS`).
//! Paths arriving close together are grouped into one batch, so the
//! closure and missing-path queries stay few.

use std::io::BufRead as _;
use std::time::Duration;

use tokio::sync::mpsc;

/// Wait for more paths after the first of a batch before starting it.
const LINGER: Duration = Duration::from_millis(300);
/// Most paths in one batch.
const MAX_BATCH: usize = 1000;

/// Reads stdin on its own thread (a blocking read must not hold up the
/// runtime, nor its shutdown), sending each word of each line.
pub fn spawn_reader() -> mpsc::UnboundedReceiver<Result<String, std::io::Error>> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let words: Vec<String> = match line {
                Ok(line) => line.split_whitespace().map(str::to_owned).collect(),
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            for word in words {
                if tx.send(Ok(word)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The next batch: waits for one path, then takes whatever else arrives
/// within [`LINGER`] of the previous one, up to [`MAX_BATCH`]. `None` at
/// end of input.
pub async fn next_batch<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match tokio::time::timeout(LINGER, rx.recv()).await {
            Ok(Some(item)) => batch.push(item),
            Ok(None) | Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_what_is_queued_and_ends_at_eof() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 0..3 {
            tx.send(i).unwrap();
        }
        drop(tx);
        assert_eq!(next_batch(&mut rx).await, Some(vec![0, 1, 2]));
        assert_eq!(next_batch(&mut rx).await, None);
    }

    #[tokio::test]
    async fn a_batch_does_not_wait_for_end_of_input() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(1).unwrap();
        // The sender stays open: the batch must still come back.
        assert_eq!(next_batch(&mut rx).await, Some(vec![1]));
        drop(tx);
    }
}
