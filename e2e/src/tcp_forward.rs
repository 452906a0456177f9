//! A TCP forwarder: the test's PostgreSQL and S3 server listen on
//! 127.0.0.1 of the test's namespace, which nodes in their own network
//! namespaces cannot reach. A forwarder listening on a node's gateway
//! address relays to them, so the system's PostgreSQL needs no
//! reconfiguration. Byte-for-byte: S3 request signatures (which cover the
//! `Host` header the client sent) stay valid.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Relays every connection to `listen` on to `target`; stops, cutting its
/// connections, on drop.
pub struct TcpForwarder {
    addr: SocketAddr,
    task: JoinHandle<()>,
    /// Bytes relayed towards `target` by connections that have ended.
    sent: Arc<AtomicU64>,
    /// Connections accepted, and those that have ended.
    opened: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
}

impl TcpForwarder {
    /// Listens on a free port of `ip`.
    pub async fn start(ip: IpAddr, target: SocketAddr) -> anyhow::Result<Self> {
        Self::round_robin(ip, vec![target]).await
    }

    /// Listens on a free port of `ip`, relaying each connection to the
    /// next of `targets` in turn: a balancer spreading one client's
    /// connections over API replicas.
    pub async fn round_robin(ip: IpAddr, targets: Vec<SocketAddr>) -> anyhow::Result<Self> {
        anyhow::ensure!(!targets.is_empty(), "a forwarder needs a target");
        let listener = TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let sent = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicU64::new(0));
        let opened = Arc::new(AtomicU64::new(0));
        let (sent_total, closed_total, opened_total) =
            (sent.clone(), closed.clone(), opened.clone());
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it drops (and aborts) every relay.
            let mut relays = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        let n = opened_total.fetch_add(1, Ordering::SeqCst);
                        let target = targets[n as usize % targets.len()];
                        let (sent, closed) = (sent_total.clone(), closed_total.clone());
                        relays.spawn(async move {
                            if let Ok(mut outbound) = TcpStream::connect(target).await
                                && let Ok((up, _)) =
                                    tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await
                            {
                                sent.fetch_add(up, Ordering::SeqCst);
                            }
                            closed.fetch_add(1, Ordering::SeqCst);
                        });
                    }
                    // Reap finished relays so the set stays small.
                    Some(_) = relays.join_next(), if !relays.is_empty() => {}
                }
            }
        });
        Ok(Self {
            addr,
            task,
            sent,
            opened,
            closed,
        })
    }

    /// Bytes sent towards the target by connections that have ended, once
    /// every accepted connection has (`None` while one is open): what a
    /// client that has exited sent, request headers included.
    pub fn sent(&self) -> Option<u64> {
        // Each relay adds its bytes before it counts as closed.
        let closed = self.closed.load(Ordering::SeqCst);
        let all_closed = closed == self.opened.load(Ordering::SeqCst);
        all_closed.then(|| self.sent.load(Ordering::SeqCst))
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.opened.load(Ordering::SeqCst)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpForwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
