//! Hosts for a cluster test: each node in a network namespace of its own,
//! joined to the test's (root) namespace by a veth pair with private
//! addresses, so nodes reach each other only over a network, as on separate
//! machines, and in a mount namespace where the other nodes' directories
//! are hidden ([`Host::command`]). The test creates and deletes every namespace and link itself
//! (`ip netns`, `ip link`; root and iproute2 needed).
//!
//! Where namespaces cannot be created (no `ip`, no `CAP_NET_ADMIN`),
//! [`Host::Loopback`] runs the node as a plain process on 127.0.0.1
//! instead, and [`hosts`] says so on stderr.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

/// A network namespace with a veth pair to the root namespace: the root
/// side has `gateway`, the namespace side `addr` (a /30 of 10.0.0.0/8).
/// Deleted, with its link, on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    host_veth: String,
    gateway: Ipv4Addr,
    addr: Ipv4Addr,
}

impl NetNs {
    /// Creates namespace `name` linked by `host_veth` (at most 15 bytes)
    /// over `gateway`/`addr` (one /30), loopback and link up, default
    /// route via the root namespace.
    fn create(
        name: &str,
        host_veth: &str,
        gateway: Ipv4Addr,
        addr: Ipv4Addr,
    ) -> anyhow::Result<Self> {
        ip(&["netns", "add", name])?;
        // From here on, drop cleans up whatever was made.
        let ns = Self {
            name: name.to_owned(),
            host_veth: host_veth.to_owned(),
            gateway,
            addr,
        };
        let peer = format!("{}n", &host_veth[..host_veth.len() - 1]);
        ip(&[
            "link", "add", host_veth, "type", "veth", "peer", "name", &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", name])?;
        ip(&["addr", "add", &format!("{gateway}/30"), "dev", host_veth])?;
        ip(&["link", "set", host_veth, "up"])?;
        ip(&[
            "-n",
            name,
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            &peer,
        ])?;
        ip(&["-n", name, "link", "set", &peer, "up"])?;
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            name,
            "route",
            "add",
            "default",
            "via",
            &gateway.to_string(),
        ])?;
        Ok(ns)
    }

    /// The namespace's name (`ip netns exec NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace frees its end of the pair once its last
        // process is gone; the root end is removed explicitly.
        let _ = ip(&["link", "delete", &self.host_veth]);
        let _ = ip(&["netns", "delete", &self.name]);
    }
}

/// Where a node runs.
#[derive(Debug)]
pub enum Host {
    /// Its own network namespace.
    Namespace(NetNs),
    /// A plain process in the test's namespace (namespaces unavailable).
    Loopback,
}

impl Host {
    /// The address other hosts (and the test) reach this node at.
    pub fn addr(&self) -> IpAddr {
        match self {
            Self::Namespace(ns) => ns.addr.into(),
            Self::Loopback => Ipv4Addr::LOCALHOST.into(),
        }
    }

    /// The address this node reaches the test's namespace at (where the
    /// database and S3 forwarders listen).
    pub fn gateway(&self) -> IpAddr {
        match self {
            Self::Namespace(ns) => ns.gateway.into(),
            Self::Loopback => Ipv4Addr::LOCALHOST.into(),
        }
    }

    /// True if the node has a network of its own: ports need not be free
    /// in the test's namespace.
    pub fn is_isolated(&self) -> bool {
        matches!(self, Self::Namespace(_))
    }

    /// A command running `program` on this host, with each directory of
    /// `hide` covered by an empty, inaccessible tmpfs (the other nodes'
    /// files). `ip netns exec NAME` gives the command a mount namespace of
    /// its own, so those mounts are seen by it alone; then `sh` execs the
    /// program: the child's pid is the program's, so `kill -9` reaches the
    /// program itself. On [`Host::Loopback`], `hide` is ignored.
    pub fn command(&self, program: &Path, hide: &[PathBuf]) -> Command {
        match self {
            Self::Namespace(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &ns.name, "sh", "-c", HIDE_AND_EXEC, "sh"])
                    .args(hide)
                    .arg("--")
                    .arg(program);
                cmd
            }
            Self::Loopback => Command::new(program),
        }
    }
}

/// `sh -c` script: mounts an empty tmpfs (mode 000) over each argument up
/// to `--`, then execs the rest.
const HIDE_AND_EXEC: &str = r#"while [ "$1" != -- ]; do mount -t tmpfs -o size=4k,mode=000 larder-hidden "$1" || exit 1; shift; done; shift; exec "$@""#;

/// Set to run every node as a plain loopback process (what happens anyway
/// where namespaces cannot be created).
pub const NO_NETNS_ENV: &str = "LARDER_E2E_NO_NETNS";

/// `n` hosts, each in a fresh namespace; or, if the first namespace cannot
/// be created or `$LARDER_E2E_NO_NETNS` is set, `n` [`Host::Loopback`] (the
/// reason printed on stderr).
/// Names and addresses derive from the test's pid, so concurrent test
/// processes do not collide.
pub fn hosts(n: usize) -> anyhow::Result<Vec<Host>> {
    anyhow::ensure!(n < 60, "at most 59 hosts");
    if std::env::var_os(NO_NETNS_ENV).is_some() {
        eprintln!("{NO_NETNS_ENV} is set: the cluster's nodes run as plain processes on 127.0.0.1");
        return Ok((0..n).map(|_| Host::Loopback).collect());
    }
    let pid = std::process::id();
    // A 10.x.y.0/30 block per host, x from the pid: 10.64.0.0 to 10.191.255.255.
    let second = 64 + (pid % 128) as u8;
    let mut hosts = Vec::with_capacity(n);
    for i in 0..n {
        let third = (pid / 128 % 4) as u8 * 64 + i as u8;
        let gateway = Ipv4Addr::new(10, second, third, 1);
        let addr = Ipv4Addr::new(10, second, third, 2);
        let name = format!("larder-e2e-{pid}-{i}");
        let veth = format!("lr{pid:x}x{i}h");
        match NetNs::create(&name, &veth, gateway, addr) {
            Ok(ns) => hosts.push(Host::Namespace(ns)),
            Err(e) if i == 0 => {
                eprintln!(
                    "network namespaces unavailable ({e:#}): the cluster's nodes run as plain processes on 127.0.0.1 instead"
                );
                return Ok((0..n).map(|_| Host::Loopback).collect());
            }
            Err(e) => return Err(e.context(format!("creating network namespace {name}"))),
        }
    }
    Ok(hosts)
}

/// Runs `ip ARGS…`, failing with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (install iproute2)")?;
    anyhow::ensure!(
        out.status.success(),
        "ip {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
