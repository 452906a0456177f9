//! Bounded polling: tests wait for outcomes, never for fixed durations.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every `every` until it yields `Some`, or fails after `limit`
/// naming `what` and the last observation `check` reported through `Err`.
///
/// `check` returns `Ok(Some(v))` when done, `Ok(None)` to keep waiting, and
/// `Err` for a hard failure that ends the wait at once.
pub async fn until<T, F, Fut>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if start.elapsed() >= limit {
            anyhow::bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}
