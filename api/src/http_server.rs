//! The HTTP/1.1 connection loop (hyper's server directly, since
//! `axum::serve` has no timeouts): what a client that stops talking may
//! hold, from `[http]` (docs/operations.md "Connections and timeouts").
//!
//! - **Connections**: at most `max-connections` are served at once. Beyond
//!   that the loop stops accepting, so new clients wait in the kernel's
//!   listen backlog until a connection closes; none is refused.
//! - **Idle**: a connection with no request in progress that receives
//!   nothing for `idle-timeout` is closed (a fresh one included).
//! - **Headers**: once a request's first byte arrived, its head must be
//!   complete within `header-read-timeout`.
//! - **Bodies**: request bodies must keep `body-min-rate` over
//!   `body-rate-window` ([`crate::body_rate`]).
//!
//! A request in progress (its handler running or its response streaming)
//! is never cut by the idle or header timeouts: slow work on our side is not
//! the client's fault, and a slow download is paced by TCP.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use larder_shared::config::HttpConfig;

use crate::body_rate::MinRate;

/// "Not set" for the millisecond clocks of [`Activity`].
const UNSET: u64 = u64::MAX;

/// Serves `router` on `listener` until `shutdown`, then lets requests in
/// progress finish (graceful shutdown) for up to `[http] shutdown-timeout`,
/// closes the connections still open, and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: HttpConfig,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    // Cancelled when the graceful shutdown's time is up.
    let hard_stop = CancellationToken::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.map_err(io::Error::other)?,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // A streamed body's first write follows the head: with Nagle's
        // algorithm it waits for the client's delayed ACK (~40 ms), which
        // for small NARs is most of the download (nginx's `tcp_nodelay`).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY not set");
        }
        let router = router.clone();
        let (shutdown, hard_stop) = (shutdown.clone(), hard_stop.clone());
        let config = config.clone();
        tokio::spawn(async move {
            connection(stream, peer, router, config, shutdown, hard_stop).await;
            tracing::debug!(%peer, "connection closed");
            drop(permit);
        });
    }
    // Every connection holds a permit until it is closed.
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    let grace = config.shutdown_timeout.get();
    if tokio::time::timeout(grace, slots.clone().acquire_many_owned(all))
        .await
        .is_err()
    {
        let open = config.max_connections - slots.available_permits();
        tracing::warn!(
            open,
            ?grace,
            "requests still in progress at the end of shutdown-timeout: closing their connections"
        );
        hard_stop.cancel();
        let _ = slots.acquire_many(all).await;
    }
    Ok(())
}

/// What the watchdog of one connection knows, in milliseconds since
/// `epoch`.
struct Activity {
    epoch: Instant,
    /// Requests whose response is not yet fully sent.
    in_flight: AtomicUsize,
    /// Last time a byte arrived.
    last_read: AtomicU64,
    /// When the first byte of a request head arrived, while no request was
    /// in progress.
    head_started: AtomicU64,
    /// When the last request in progress finished.
    idle_since: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_read: AtomicU64::new(0),
            head_started: AtomicU64::new(UNSET),
            idle_since: AtomicU64::new(0),
        })
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn read(&self, n: usize) {
        if n == 0 {
            return;
        }
        let now = self.now();
        self.last_read.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ =
                self.head_started
                    .compare_exchange(UNSET, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// Why the connection should be closed now, if it should.
    fn expired(&self, config: &HttpConfig) -> Option<&'static str> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let now = self.now();
        let head = self.head_started.load(Ordering::Acquire);
        if head != UNSET {
            let limit = config.header_read_timeout.get().as_millis() as u64;
            return (now.saturating_sub(head) > limit).then_some("request head timed out");
        }
        let quiet_since = self
            .last_read
            .load(Ordering::Relaxed)
            .max(self.idle_since.load(Ordering::Relaxed));
        let limit = config.idle_timeout.get().as_millis() as u64;
        (now.saturating_sub(quiet_since) > limit).then_some("idle timeout")
    }
}

/// Marks one request in progress until dropped with its response body (or
/// with the request, if it never produced one).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.head_started.store(UNSET, Ordering::Release);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now(), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body carrying its request's [`InFlight`] mark.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, reporting every byte read to the watchdog.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if polled.is_ready() {
            self.activity.read(buf.filled().len() - before);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves one connection until the client closes it, a timeout expires, or
/// shutdown (after the request in progress, if any, unless `hard_stop`).
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    config: HttpConfig,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
) {
    let activity = Activity::new();
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let svc_activity = activity.clone();
    let (min_rate, window) = (config.body_min_rate, config.body_rate_window.get());
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let in_flight = InFlight::enter(&svc_activity);
        let (parts, body) = req.into_parts();
        let body = MinRate::new(body, min_rate, window);
        let pace = body.pace();
        let mut req = Request::from_parts(parts, Body::new(body));
        req.extensions_mut().insert(pace);
        // The TCP peer, for the audit trail ([`crate::client_addr`]).
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move {
            let response = router.oneshot(req).await.unwrap_or_else(|e| match e {});
            Ok::<_, Infallible>(response.map(|inner| {
                Body::new(Tracked {
                    inner,
                    _in_flight: in_flight,
                })
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Our watchdog times heads from their first byte instead.
        .header_read_timeout(None)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let tick = (config
        .header_read_timeout
        .get()
        .min(config.idle_timeout.get())
        / 4)
    .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection error");
                }
                return;
            }
            _ = ticks.tick() => {
                if let Some(why) = activity.expired(&config) {
                    tracing::debug!(reason = why, "closing connection");
                    return;
                }
            }
            () = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    result = conn.as_mut() => if let Err(e) = result {
                        tracing::debug!(error = %e, "connection error during shutdown");
                    },
                    () = hard_stop.cancelled() => {
                        tracing::debug!(%peer, "closing a connection at the end of shutdown-timeout");
                    }
                }
                return;
            }
        }
    }
}
