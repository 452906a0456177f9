//! A request body that fails when the client sends too slowly (docs/operations.md "Connections and timeouts"):
//! a stalled upload must not hold its connection and staging file forever,
//! yet a multi-GB push over a slow link must pass. So there is no total
//! deadline, only a minimum rate: over each window of *waiting for the
//! client* (time the handler spends elsewhere, e.g. writing to storage, does
//! not count) at least `min_rate × window` bytes must arrive, or the body
//! yields an error, which the upload routes treat as an interrupted upload
//! (staged data removed, nothing recorded).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Why a body was cut off.
#[derive(Debug, thiserror::Error)]
#[error(
    "request body stalled: {got} bytes in {window:?} of waiting, below the minimum of {min_rate} bytes/s"
)]
pub struct Stalled {
    got: u64,
    window: Duration,
    min_rate: u64,
}

/// What a handler may tell its body's rate check, found in the request's
/// extensions (absent when the router is called without the connection
/// loop, as in tests).
#[derive(Debug, Clone, Default)]
pub struct Pace(Arc<AtomicBool>);

impl Pace {
    /// The body arrives in pieces with pauses by design (a streamed
    /// prepare's chunk list, sent as the client's other requests finish):
    /// from now on a window of waiting needs some bytes, not `min_rate ×
    /// window`, so only a body silent for a whole window since its last
    /// byte fails.
    pub fn relax(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn relaxed(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Wraps a body, enforcing `min_rate` bytes/s over `window`.
pub struct MinRate<B> {
    inner: B,
    pace: Pace,
    min_rate: u64,
    window: Duration,
    /// Bytes received in the current window.
    got: u64,
    /// Waiting time accumulated in the current window.
    waited: Duration,
    /// When the current wait began, if the client is being waited for.
    waiting_since: Option<Instant>,
    /// Fires when the current wait fills the window.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> MinRate<B> {
    /// `min_rate` 0 disables the check.
    pub fn new(inner: B, min_rate: u64, window: Duration) -> Self {
        Self {
            inner,
            pace: Pace::default(),
            min_rate,
            window,
            got: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
        }
    }

    /// The handle a handler relaxes the check with.
    pub fn pace(&self) -> Pace {
        self.pace.clone()
    }

    /// Ends the current wait; checks and restarts the window once full.
    fn stop_waiting(&mut self, now: Instant) -> Result<(), Stalled> {
        if let Some(since) = self.waiting_since.take() {
            self.waited += now - since;
        }
        let relaxed = self.pace.relaxed();
        if relaxed && self.got > 0 {
            // Progress is all a relaxed body owes: its window starts again
            // at each piece, so it fails a window after its last byte.
            self.got = 0;
            self.waited = Duration::ZERO;
            return Ok(());
        }
        if self.waited < self.window {
            return Ok(());
        }
        let needed = match relaxed {
            true => 1,
            false => (self.min_rate as f64 * self.window.as_secs_f64()) as u64,
        };
        if self.got < needed {
            return Err(Stalled {
                got: self.got,
                window: self.window,
                min_rate: self.min_rate,
            });
        }
        self.got = 0;
        self.waited = Duration::ZERO;
        Ok(())
    }
}

impl<B> Body for MinRate<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if this.min_rate == 0 {
            return polled.map_err(Into::into);
        }
        let now = Instant::now();
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.got += data.len() as u64;
                }
                this.stop_waiting(now)?;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|r| r.map_err(Into::into))),
            Poll::Pending => {
                if this.waiting_since.is_none() {
                    this.waiting_since = Some(now);
                    let deadline = now + this.window.saturating_sub(this.waited);
                    match &mut this.timer {
                        Some(t) => t.as_mut().reset(deadline),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                let fired = this
                    .timer
                    .as_mut()
                    .is_some_and(|t| t.as_mut().poll(cx).is_ready());
                if fired {
                    this.stop_waiting(Instant::now())?;
                    // The window had enough bytes: wait on, for a fresh one.
                    let now = Instant::now();
                    this.waiting_since = Some(now);
                    if let Some(t) = &mut this.timer {
                        t.as_mut().reset(now + this.window);
                        let _ = t.as_mut().poll(cx);
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Chunks = StreamBody<
        futures::stream::BoxStream<'static, Result<Frame<Bytes>, std::convert::Infallible>>,
    >;

    /// A body yielding `pieces`, each after its delay.
    fn paced(pieces: Vec<(u64, usize)>) -> Chunks {
        use futures::StreamExt;
        let s = futures::stream::iter(pieces).then(|(ms, len)| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(Frame::data(Bytes::from(vec![0u8; len])))
        });
        StreamBody::new(s.boxed())
    }

    #[tokio::test(start_paused = true)]
    async fn fast_enough_bodies_pass_however_long() {
        // 100 bytes every 50 ms over 10 s of (virtual) time: 2000 B/s.
        let body = MinRate::new(paced(vec![(50, 100); 200]), 1000, Duration::from_secs(1));
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 20_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails() {
        let body = MinRate::new(
            paced(vec![(10, 5000), (3_600_000, 1)]),
            1000,
            Duration::from_secs(1),
        );
        let err = body.collect().await.unwrap_err();
        assert!(err.to_string().contains("stalled"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_fails() {
        // 10 B/s against a minimum of 1000 B/s.
        let body = MinRate::new(paced(vec![(100, 1); 100]), 1000, Duration::from_secs(1));
        assert!(body.collect().await.is_err());
    }

    /// `pieces` against 1000 B/s over 1 s windows, relaxed.
    fn relaxed(pieces: Vec<(u64, usize)>) -> MinRate<Chunks> {
        let body = MinRate::new(paced(pieces), 1000, Duration::from_secs(1));
        body.pace().relax();
        body
    }

    #[tokio::test(start_paused = true)]
    async fn a_relaxed_body_needs_only_progress() {
        // 10 B every 900 ms against 1000 B/s: a trickle, yet never silent
        // for a whole window.
        let body = relaxed(vec![(900, 10); 20]);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 200);

        // Silent for an hour; and silent for 1.4 s after a piece early in
        // a window: a window counts from the last byte, not from the
        // window's start.
        for pieces in [vec![(10, 10), (3_600_000, 1)], vec![(100, 10), (1400, 10)]] {
            let err = relaxed(pieces.clone()).collect().await.unwrap_err();
            assert!(err.to_string().contains("stalled"), "{pieces:?}: {err}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn zero_disables() {
        let body = MinRate::new(paced(vec![(10_000, 1); 3]), 0, Duration::from_secs(1));
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 3);
    }
}
