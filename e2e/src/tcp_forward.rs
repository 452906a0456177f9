//! A TCP forwarder: the test's PostgreSQL and S3 server listen on
//! 127.0.0.1 of the test's namespace, which nodes in their own network
//! namespaces cannot reach. A forwarder listening on a node's gateway
//! address relays to them, so the system's PostgreSQL needs no
//! reconfiguration. Byte-for-byte: S3 request signatures (which cover the
//! `Host` header the client sent) stay valid.

use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Relays every connection to `listen` on to `target`; stops, cutting its
/// connections, on drop.
pub struct TcpForwarder {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TcpForwarder {
    /// Listens on a free port of `ip`.
    pub async fn start(ip: IpAddr, target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            // Owned by this task: aborting it drops (and aborts) every relay.
            let mut relays = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { continue };
                        relays.spawn(async move {
                            if let Ok(mut outbound) = TcpStream::connect(target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            }
                        });
                    }
                    // Reap finished relays so the set stays small.
                    Some(_) = relays.join_next(), if !relays.is_empty() => {}
                }
            }
        });
        Ok(Self { addr, task })
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
