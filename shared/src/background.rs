//! Background CPU work: ingest's cutting, hashing and compression, and
//! compaction's recompression, run below the priority of the threads that
//! answer requests and talk to the database.
//!
//! Why: a process ingesting (a worker, or the embedded default's API with
//! its in-process jobs) had dozens of CPU-bound threads on Tokio's blocking
//! pool (a chunker and a checker per ingest, six compression batches each).
//! The runtime's few threads then waited their turn for a core at every
//! wake-up, so each database round trip of a commit did too (group commits
//! of 50–200 ms, docs/measurements.md), and an in-process ingest took CPU
//! from the uploads and downloads the same process served. Here bulk work
//! is bounded to one thread per core ([`run`]), and every thread doing it
//! runs at [`NICE`]: a waking request or commit gets a core at once, and
//! ingest takes whatever is left, which on a busy machine is still all of
//! it.
//!
//! The priority is a thread's own on Linux (its nice value); elsewhere
//! lowering it may lower the whole process's, which costs nothing there.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::{mpsc, oneshot};

/// The nice value of background threads: far enough below request handling
/// (0) that a runnable request thread preempts them, not so far that
/// ingest stalls on a machine busy with other processes.
pub const NICE: i32 = 10;

/// A background task panicked (or its thread could not start).
#[derive(Debug, thiserror::Error)]
#[error("a background task {0}")]
pub struct Failed(&'static str);

/// Lowers the calling thread to [`NICE`]. Errors are ignored: priority is
/// an optimisation, never a reason to fail work.
pub fn lower_priority() {
    let _ = rustix::process::setpriority_process(None, NICE);
}

/// The process's pool for short CPU-bound tasks: one thread per core, each
/// at [`NICE`]. Built on first use.
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(num_cpus::get().max(1))
            .thread_name(|i| format!("larder-cpu-{i}"))
            .start_handler(|_| lower_priority())
            .build()
            .map_err(|e| tracing::warn!(error = %e, "no background pool; using blocking threads"))
            .ok()
    })
    .as_ref()
}

/// Runs the CPU-bound `f` (a batch of compressions, say) on the background
/// pool and waits for it; at most one such task per core runs at a time,
/// the rest queue.
pub async fn run<T, F>(f: F) -> Result<T, Failed>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let Some(pool) = pool() else {
        return tokio::task::spawn_blocking(f)
            .await
            .map_err(|_| Failed("panicked"));
    };
    let (tx, rx) = oneshot::channel();
    pool.spawn(move || {
        let result = std::panic::catch_unwind(AssertUnwindSafe(f));
        let _ = tx.send(result.map_err(|_| Failed("panicked")));
    });
    rx.await.unwrap_or(Err(Failed("was dropped")))
}

/// A background stage on a thread of its own ([`spawn`]): what its closure
/// returned, once it has.
pub struct Handle<T>(oneshot::Receiver<Result<T, Failed>>);

impl<T> Future for Handle<T> {
    type Output = Result<T, Failed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Failed("ended without a result"))))
    }
}

/// Runs `f` on a new thread at [`NICE`]: for a stage that blocks on its
/// input for its whole life (a chunker, a checker), which must not hold one
/// of the pool's few threads while it waits.
pub fn spawn<T, F>(name: &str, f: F) -> Handle<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    // A thread that cannot start drops `tx`: the handle reports a failure.
    let _ = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_priority();
            let result = std::panic::catch_unwind(AssertUnwindSafe(f));
            let _ = tx.send(result.map_err(|_| Failed("panicked")));
        });
    Handle(rx)
}

/// Runs `produce` on a background thread ([`spawn`]) and streams what it
/// sends, as [`crate::storage`]'s blocking stream does on the blocking
/// pool: at most `capacity` items queued; when the consumer drops the
/// stream, `produce`'s next send fails and it should return; if it panics,
/// the stream ends with `on_failure`, so a truncated output is never taken
/// as complete.
pub fn stream<T, P, F>(
    name: &str,
    capacity: usize,
    produce: P,
    on_failure: F,
) -> impl Stream<Item = T> + Send + 'static
where
    T: Send + 'static,
    P: FnOnce(&mpsc::Sender<T>) + Send + 'static,
    F: FnOnce(Failed) -> T + Send + 'static,
{
    let (tx, rx) = mpsc::channel(capacity);
    channel_stream(rx, spawn(name, move || produce(&tx)), on_failure)
}

/// What a producer thread sends on `rx`, then, once the channel closes
/// (the producer returned, or died), `on_failure` of its end `done` if that
/// is an error: a truncated output is never taken as complete.
pub(crate) fn channel_stream<T, E, D, F>(
    rx: mpsc::Receiver<T>,
    done: D,
    on_failure: F,
) -> impl Stream<Item = T> + Send + 'static
where
    T: Send + 'static,
    E: Send + 'static,
    D: Future<Output = Result<(), E>> + Send + 'static,
    F: FnOnce(E) -> T + Send + 'static,
{
    futures::stream::unfold(
        (rx, Some((done, on_failure))),
        |(mut rx, pending)| async move {
            if let Some(item) = rx.recv().await {
                return Some((item, (rx, pending)));
            }
            let (done, on_failure) = pending?;
            match done.await {
                Ok(()) => None,
                Err(e) => Some((on_failure(e), (rx, None))),
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn run_returns_the_result_and_survives_a_panic() {
        assert_eq!(run(|| 6 * 7).await.unwrap(), 42);
        let err = run(|| -> u8 { panic!("boom") }).await.unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        assert_eq!(run(|| 1).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_stream_that_panics_ends_with_the_failure() {
        let items: Vec<Result<u32, String>> = stream(
            "test",
            2,
            |tx| {
                for i in 0..3 {
                    if tx.blocking_send(Ok(i)).is_err() {
                        return;
                    }
                }
                panic!("producer died");
            },
            |e| Err(e.to_string()),
        )
        .collect()
        .await;
        assert_eq!(items.len(), 4);
        assert!(items[3].as_ref().unwrap_err().contains("panicked"));
    }

    #[tokio::test]
    async fn background_threads_run_below_normal_priority() {
        let nice = spawn("test", || rustix::process::getpriority_process(None))
            .await
            .unwrap()
            .unwrap();
        // At least NICE: a runner already niced further keeps its value.
        assert!(nice >= NICE, "{nice}");
    }
}
