//! A fault-injecting loopback HTTP proxy, with one of two faults, each
//! chosen by its constructor:
//!
//! - [`FaultProxy::start`]: the first `200` response for each NAR URL
//!   (`…/nar/…`) is cut at half its `Content-Length` by closing the
//!   connection, as a dropped link would, so a test can check that each cut
//!   download was resumed with a `206`.
//! - [`FaultProxy::injecting`]: the first chunk-push commit (`POST
//!   …/caches/{cache}/nars`) each [`Rule`] matches is answered by the proxy
//!   with the rule's error, in the server's JSON error shape, instead of
//!   being forwarded (a streamed commit, whose body has no length, is
//!   matched by its mode alone: [`STREAMED`]). The client's fallbacks on those answers (a lost
//!   prepared NAR, a forgotten chunk list, dropped chunks) then run against
//!   a real server that would rarely say them (docs/protocol.md "Chunk-level
//!   push").
//!
//! Everything else passes through, and every exchange is recorded.
//!
//! HTTP/1.1 only, one request per connection: the request is forwarded with
//! `Connection: close`, so the upstream's response ends at EOF and the next
//! request arrives on a new connection the proxy can inspect again.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest chunk-push request body an injecting proxy reads (a commit
/// listing a few thousand hashes in hex is well under it).
const MAX_BODY: u64 = 16 << 20;
/// Larder's chunk-push routes.
const CHUNK_PUSH: &str = "/_api/larder/v1/caches/";
/// The end of a chunk-push commit's path.
const COMMIT: &str = "/nars";
/// The end of a missing-chunks question's path.
const QUESTION: &str = "/chunks/missing";
/// Content type of a body made of a JSON head and raw 32-byte hashes.
const HASH_LIST: &str = "application/x-larder-hash-list";
/// Content type of a one-step commit carrying its NAR of one chunk.
const INLINE_NAR: &str = "application/x-larder-inline-nar";
/// [`NarRequest::mode`] of such a commit.
pub const INLINE: &str = "inline";
/// [`NarRequest::mode`] of a commit whose body has no length.
pub const STREAMED: &str = "streamed";

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
    /// The error kind the proxy answered with instead of the server.
    pub injected: Option<String>,
    /// The chunk-push commit, as read by an injecting proxy.
    pub nar: Option<NarRequest>,
}

/// A chunk-push `POST …/nars` as an injecting proxy read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarRequest {
    /// `commit` (also when absent, as the server reads it), `prepare` or
    /// `publish`; [`STREAMED`] for a body without a length (a streamed
    /// prepare), which the proxy does not read: its other fields are empty;
    /// [`INLINE`] for a one-step commit carrying its NAR.
    pub mode: String,
    /// `info.store_path`.
    pub store_path: String,
    /// The ids of the chunk lists it names instead of its chunks.
    pub chunk_lists: Vec<String>,
    /// The NAR's chunks (hex): those it lists, or those of the lists it
    /// names, resolved from the hash-list questions the proxy relayed (as
    /// the server resolves them); empty for a publish or an unknown list.
    pub chunks: Vec<String>,
}

/// An error answer the proxy gives instead of the server, once: to the
/// first `POST …/nars` that `matches` accepts.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Which commit it answers.
    pub matches: fn(&NarRequest) -> bool,
    /// The answer's status.
    pub status: u16,
    /// The error kind (the JSON `error`), e.g. `PreparedMissing`.
    pub kind: &'static str,
    /// The JSON `message`, as the server words it for this request.
    pub message: fn(&NarRequest) -> String,
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
    /// Whether NAR downloads are cut.
    cut_nars: bool,
    cut: Mutex<HashSet<String>>,
    /// Whether chunk-push requests are read (rules were given).
    inspect: bool,
    /// Rules that have not answered yet, in the order given.
    rules: Mutex<Vec<Rule>>,
    /// The hash lists of relayed missing-chunks questions, by id.
    lists: Mutex<HashMap<String, Vec<String>>>,
}

impl FaultProxy {
    /// Listens on a free loopback port, forwarding to `upstream` and cutting
    /// each NAR URL's first `200` response at half.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        Self::launch(
            upstream,
            Shared {
                cut_nars: true,
                ..Shared::default()
            },
        )
        .await
    }

    /// Listens on a free loopback port, forwarding to `upstream` all but the
    /// first chunk-push commit each of `rules` matches, which the proxy
    /// answers itself. A commit is answered by the first rule, in order,
    /// that matches it and has not answered yet. Nothing is cut.
    pub async fn injecting(upstream: SocketAddr, rules: Vec<Rule>) -> anyhow::Result<Self> {
        Self::launch(
            upstream,
            Shared {
                inspect: true,
                rules: Mutex::new(rules),
                ..Shared::default()
            },
        )
        .await
    }

    async fn launch(upstream: SocketAddr, shared: Shared) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(shared);
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

    /// Every exchange so far, in order of completion (an injected answer
    /// is recorded before it is sent, so before anything it causes).
    pub fn seen(&self) -> Vec<Exchange> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Shared {
    fn record(&self, exchange: Exchange) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(exchange);
        }
    }

    /// The first unused rule matching `nar`, now used.
    fn take_rule(&self, nar: &NarRequest) -> Option<Rule> {
        let mut rules = self.rules.lock().ok()?;
        let at = rules.iter().position(|r| (r.matches)(nar))?;
        Some(rules.remove(at))
    }

    /// Reads a question's or a commit's body: remembers a question's hash
    /// list, and returns what a commit asks.
    fn read_request(&self, path: &str, body: &ChunkPushBody) -> Option<NarRequest> {
        if !path.ends_with(COMMIT) {
            if let (Some(id), Ok(mut lists)) = (&body.list_id, self.lists.lock()) {
                lists.insert(id.clone(), body.chunks.clone());
            }
            return None;
        }
        let head = &body.head;
        let chunk_lists = strings(&head["chunk_lists"]);
        let chunks = if chunk_lists.is_empty() {
            body.chunks.clone()
        } else {
            self.lists
                .lock()
                .ok()
                .and_then(|lists| {
                    let resolved: Option<Vec<&Vec<String>>> =
                        chunk_lists.iter().map(|id| lists.get(id)).collect();
                    resolved.map(|r| r.into_iter().flatten().cloned().collect())
                })
                .unwrap_or_default()
        };
        let mode = match body.inline {
            true => INLINE,
            false => head["mode"].as_str().unwrap_or("commit"),
        };
        Some(NarRequest {
            mode: mode.to_owned(),
            store_path: head["info"]["store_path"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            chunk_lists,
            chunks,
        })
    }
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A chunk-push request body as the server reads it.
struct ChunkPushBody {
    /// The JSON request (a hash list's head).
    head: serde_json::Value,
    /// Its chunk hashes, hex: a hash list's tail, else the JSON `chunks`.
    chunks: Vec<String>,
    /// A hash list's id: the SHA-256 of its tail, hex.
    list_id: Option<String>,
    /// A commit carrying its NAR (whose tail is that NAR, compressed).
    inline: bool,
}

impl ChunkPushBody {
    fn parse(content_type: Option<&str>, body: &[u8]) -> anyhow::Result<Self> {
        let framed = |t: &str| content_type.is_some_and(|c| c.starts_with(t));
        if !framed(HASH_LIST) && !framed(INLINE_NAR) {
            let head: serde_json::Value = serde_json::from_slice(body)?;
            let chunks = strings(&head["chunks"]);
            return Ok(Self {
                head,
                chunks,
                list_id: None,
                inline: false,
            });
        }
        let len = body
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .context("framed body without its head's length")?;
        let head = body
            .get(4..4 + len)
            .context("framed body ends in its head")?;
        let tail = &body[4 + len..];
        if framed(INLINE_NAR) {
            return Ok(Self {
                head: serde_json::from_slice(head)?,
                chunks: Vec::new(),
                list_id: None,
                inline: true,
            });
        }
        anyhow::ensure!(
            tail.len().is_multiple_of(32),
            "hash list of {} bytes",
            tail.len()
        );
        Ok(Self {
            head: serde_json::from_slice(head)?,
            chunks: tail.chunks_exact(32).map(hex::encode).collect(),
            list_id: Some(hex::encode(Sha256::digest(tail))),
            inline: false,
        })
    }
}

/// The server's error body (api/src/error.rs), fields in its order.
#[derive(Serialize)]
struct ErrorBody<'a> {
    code: u16,
    error: &'a str,
    message: &'a str,
}

/// A whole response carrying `rule`'s error for `nar`: the server's status
/// and JSON body; of its headers, only those a client reads the error by.
fn error_response(rule: &Rule, nar: &NarRequest) -> anyhow::Result<Vec<u8>> {
    let message = (rule.message)(nar);
    let body = serde_json::to_string(&ErrorBody {
        code: rule.status,
        error: rule.kind,
        message: &message,
    })?;
    let reason = match rule.status {
        409 => "Conflict",
        411 => "Length Required",
        _ => "",
    };
    Ok(format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        rule.status,
        body.len()
    )
    .into_bytes())
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

/// Reads the rest of a `len`-byte body whose start is `body`.
async fn read_body(
    stream: &mut (impl AsyncRead + Unpin),
    body: &mut Vec<u8>,
    len: u64,
) -> anyhow::Result<()> {
    anyhow::ensure!(len <= MAX_BODY, "request body of {len} bytes");
    let missing = (len as usize).saturating_sub(body.len());
    let start = body.len();
    body.resize(start + missing, 0);
    stream
        .read_exact(&mut body[start..])
        .await
        .context("request body")?;
    Ok(())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

async fn relay(mut client: TcpStream, upstream: SocketAddr, shared: &Shared) -> anyhow::Result<()> {
    let Ok((head, mut early)) = read_head(&mut client).await else {
        return Ok(()); // the client opened and closed an idle connection
    };
    let mut request_line = head.lines().next().unwrap_or("").split_whitespace();
    let method = request_line.next().unwrap_or("").to_owned();
    let path = request_line.next().unwrap_or("").to_owned();
    let mut exchange = Exchange {
        range: header(&head, "range").map(str::to_owned),
        method,
        path,
        status: 0,
        cut: false,
        injected: None,
        nar: None,
    };
    let inspect = shared.inspect
        && exchange.method == "POST"
        && exchange.path.starts_with(CHUNK_PUSH)
        && [COMMIT, QUESTION]
            .iter()
            .any(|end| exchange.path.ends_with(end));
    // A body without a length (a streamed prepare) is not read: only a
    // rule for [`STREAMED`] commits can answer it.
    let length = header(&head, "content-length").and_then(|v| v.parse().ok());
    match (inspect, length) {
        (true, Some(len)) => {
            // The whole body, forwarded as read (in `early`) unless answered here.
            read_body(&mut client, &mut early, len).await?;
            let body = ChunkPushBody::parse(header(&head, "content-type"), &early)
                .with_context(|| format!("body of {}", exchange.path))?;
            exchange.nar = shared.read_request(&exchange.path, &body);
        }
        (true, None) if exchange.path.ends_with(COMMIT) => {
            exchange.nar = Some(NarRequest {
                mode: STREAMED.to_owned(),
                store_path: String::new(),
                chunk_lists: Vec::new(),
                chunks: Vec::new(),
            });
        }
        _ => {}
    }
    if let Some(nar) = &exchange.nar
        && let Some(rule) = shared.take_rule(nar)
    {
        let response = error_response(&rule, nar)?;
        exchange.status = rule.status;
        exchange.injected = Some(rule.kind.to_owned());
        shared.record(exchange);
        client.write_all(&response).await?;
        return Ok(client.shutdown().await?);
    }

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
    let (mut from_client, mut to_client) = client.split();
    let (mut from_up, mut to_up) = up.split();
    // The rest of the request (a body longer than what came with its head:
    // a chunk batch, a streamed NAR) flows while the response is awaited;
    // the response's end ends the exchange.
    let request = async {
        let _ = tokio::io::copy(&mut from_client, &mut to_up).await;
        std::future::pending::<()>().await
    };
    tokio::select! {
        () = request => Ok(()),
        done = respond(&mut from_up, &mut to_client, exchange, shared) => done,
    }
}

/// Relays the upstream's response to the client (cut at half if it is the
/// first of a NAR URL and NARs are cut), then records the exchange.
async fn respond(
    up: &mut (impl AsyncRead + Unpin),
    client: &mut (impl AsyncWrite + Unpin),
    mut exchange: Exchange,
    shared: &Shared,
) -> anyhow::Result<()> {
    let (resp_head, body_start) = read_head(up).await?;
    exchange.status = resp_head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len: Option<u64> = header(&resp_head, "content-length").and_then(|v| v.parse().ok());
    let cut = shared.cut_nars
        && exchange.method == "GET"
        && exchange.path.contains("/nar/")
        && exchange.status == 200
        && len.is_some_and(|l| l >= 2)
        && shared
            .cut
            .lock()
            .map(|mut c| c.insert(exchange.path.clone()))
            .unwrap_or(false);
    client.write_all(resp_head.as_bytes()).await?;
    if cut {
        let half = (len.unwrap_or(0) / 2) as usize;
        let mut sent = body_start.len().min(half);
        client.write_all(&body_start[..sent]).await?;
        let mut piece = vec![0u8; 64 * 1024];
        while sent < half {
            let n = up.read(&mut piece).await?;
            anyhow::ensure!(n > 0, "upstream ended before half of {}", exchange.path);
            let take = n.min(half - sent);
            client.write_all(&piece[..take]).await?;
            sent += take;
        }
        client.flush().await?;
        exchange.cut = true;
        shared.record(exchange);
        // Closing both sockets (when the relay returns) ends it mid-body.
        return Ok(());
    }
    client.write_all(&body_start).await?;
    let result = tokio::io::copy(up, client).await;
    shared.record(exchange);
    result.map(|_| ()).map_err(Into::into)
}
