//! A fault-injecting loopback HTTP proxy: the first `200` response for each
//! NAR URL (`…/nar/…`) is cut at half its `Content-Length` by closing the
//! connection, as a dropped link would; everything else passes through.
//! It records every exchange, so a test can check that each cut download
//! was resumed with a `206`.
//!
//! HTTP/1.1 only, one request per connection: the request is forwarded with
//! `Connection: close`, so the upstream's response ends at EOF and the next
//! request arrives on a new connection the proxy can inspect again.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// One exchange the proxy saw.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Request method.
    pub method: String,
    /// Request target (path and query).
    pub path: String,
    /// The request's `Range` header.
    pub range: Option<String>,
    /// Response status.
    pub status: u16,
    /// Whether the proxy cut this response.
    pub cut: bool,
}

/// The running proxy; stops when dropped (its task is aborted).
pub struct FaultProxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Exchange>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
struct Shared {
    seen: Arc<Mutex<Vec<Exchange>>>,
    cut: Mutex<HashSet<String>>,
}

impl FaultProxy {
    /// Listens on a free loopback port, forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let seen = shared.seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = relay(client, upstream, &shared).await {
                        eprintln!("fault proxy: {e:#}");
                    }
                });
            }
        });
        Ok(Self { addr, seen, task })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every exchange so far, in order of completion.
    pub fn seen(&self) -> Vec<Exchange> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Reads until the end of an HTTP head; returns the head and any bytes read
/// past it.
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> anyhow::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut piece = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8(buf).context("head is not UTF-8")?, rest));
        }
        anyhow::ensure!(buf.len() < MAX_HEAD, "HTTP head over {MAX_HEAD} bytes");
        let n = stream.read(&mut piece).await?;
        anyhow::ensure!(n > 0, "connection closed before the end of the head");
        buf.extend_from_slice(&piece[..n]);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

async fn relay(mut client: TcpStream, upstream: SocketAddr, shared: &Shared) -> anyhow::Result<()> {
    let Ok((head, early)) = read_head(&mut client).await else {
        return Ok(()); // the client opened and closed an idle connection
    };
    let mut request_line = head.lines().next().unwrap_or("").split_whitespace();
    let method = request_line.next().unwrap_or("").to_owned();
    let path = request_line.next().unwrap_or("").to_owned();
    let range = header(&head, "range").map(str::to_owned);
    let mut forwarded: String = head
        .trim_end()
        .lines()
        .filter(|l| {
            let name = l.split(':').next().unwrap_or("").trim();
            !name.eq_ignore_ascii_case("connection")
        })
        .map(|l| format!("{l}\r\n"))
        .collect();
    forwarded.push_str("Connection: close\r\n\r\n");

    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(forwarded.as_bytes()).await?;
    up.write_all(&early).await?;
    let (resp_head, body_start) = read_head(&mut up).await?;
    let status: u16 = resp_head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len: Option<u64> = header(&resp_head, "content-length").and_then(|v| v.parse().ok());
    let cut = method == "GET"
        && path.contains("/nar/")
        && status == 200
        && len.is_some_and(|l| l >= 2)
        && shared
            .cut
            .lock()
            .map(|mut c| c.insert(path.clone()))
            .unwrap_or(false);
    let record = |cut| {
        if let Ok(mut seen) = shared.seen.lock() {
            seen.push(Exchange {
                method: method.clone(),
                path: path.clone(),
                range: range.clone(),
                status,
                cut,
            });
        }
    };
    client.write_all(resp_head.as_bytes()).await?;
    if cut {
        let half = (len.unwrap_or(0) / 2) as usize;
        let mut sent = body_start.len().min(half);
        client.write_all(&body_start[..sent]).await?;
        let mut piece = vec![0u8; 64 * 1024];
        while sent < half {
            let n = up.read(&mut piece).await?;
            anyhow::ensure!(n > 0, "upstream ended before half of {path}");
            let take = n.min(half - sent);
            client.write_all(&piece[..take]).await?;
            sent += take;
        }
        client.flush().await?;
        record(true);
        // Dropping both sockets closes the connection mid-body.
        return Ok(());
    }
    client.write_all(&body_start).await?;
    let result = tokio::io::copy_bidirectional(&mut client, &mut up).await;
    record(false);
    result.map(|_| ()).map_err(Into::into)
}
