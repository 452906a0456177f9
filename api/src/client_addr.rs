//! The client's address for the audit trail. Behind a reverse proxy the TCP
//! peer is the proxy, so `X-Forwarded-For` is believed only when the peer is
//! in `[http] trusted-proxies`, and then only from the right: each trusted
//! proxy appends the address it saw, so the last hop that is not a trusted
//! proxy is the client (anything left of it is what the client claimed).

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

use larder_shared::config::TrustedProxy;

/// The header proxies append to.
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// The client as far as trusted proxies vouch for it: the peer itself when
/// it is not trusted (or unknown), else the rightmost `X-Forwarded-For` hop
/// outside `trusted` — or the leftmost hop when every hop is trusted. A hop
/// that is not an address stops the walk at the last address vouched for.
pub fn client_addr(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &[TrustedProxy],
) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    let is_trusted = |a: IpAddr| trusted.iter().any(|t| t.contains(a));
    if !is_trusted(peer) {
        return Some(peer);
    }
    // Several header lines form one list, in order.
    let hops: Vec<&str> = headers
        .get_all(FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    let mut vouched = peer;
    for hop in hops.iter().rev() {
        let Some(addr) = parse_hop(hop) else {
            return Some(vouched);
        };
        if !is_trusted(addr) {
            return Some(addr);
        }
        vouched = addr;
    }
    Some(vouched)
}

/// `1.2.3.4`, `2001:db8::1`, or either with a port (`[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|a| a.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<TrustedProxy> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(FORWARDED_FOR, v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let h = headers(&["6.6.6.6"]);
        assert_eq!(client_addr(ip("203.0.113.5"), &h, &[]), ip("203.0.113.5"));
        let t = nets(&["10.0.0.0/8"]);
        assert_eq!(client_addr(ip("203.0.113.5"), &h, &t), ip("203.0.113.5"));
    }

    #[test]
    fn trusted_peer_names_the_last_untrusted_hop() {
        let t = nets(&["10.0.0.0/8", "192.168.1.1"]);
        // The client spoofed 6.6.6.6; the edge proxy appended 198.51.100.7.
        let h = headers(&["6.6.6.6, 198.51.100.7, 192.168.1.1"]);
        assert_eq!(client_addr(ip("10.0.0.2"), &h, &t), ip("198.51.100.7"));
        // Several header lines are one list.
        let h = headers(&["6.6.6.6", "198.51.100.7", "192.168.1.1"]);
        assert_eq!(client_addr(ip("10.0.0.2"), &h, &t), ip("198.51.100.7"));
    }

    #[test]
    fn trusted_peer_without_header_or_all_trusted() {
        let t = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_addr(ip("10.0.0.2"), &HeaderMap::new(), &t),
            ip("10.0.0.2")
        );
        let h = headers(&["10.1.1.1, 10.2.2.2"]);
        assert_eq!(client_addr(ip("10.0.0.2"), &h, &t), ip("10.1.1.1"));
    }

    #[test]
    fn garbage_stops_at_the_last_vouched_address() {
        let t = nets(&["10.0.0.0/8"]);
        let h = headers(&["1.1.1.1, unknown, 10.3.3.3"]);
        assert_eq!(client_addr(ip("10.0.0.2"), &h, &t), ip("10.3.3.3"));
        let h = headers(&["_hidden"]);
        assert_eq!(client_addr(ip("10.0.0.2"), &h, &t), ip("10.0.0.2"));
    }

    #[test]
    fn ports_ipv6_and_mapped_addresses() {
        let t = nets(&["127.0.0.1", "::1"]);
        let h = headers(&["[2001:db8::7]:4711"]);
        assert_eq!(client_addr(ip("::1"), &h, &t), ip("2001:db8::7"));
        let h = headers(&["198.51.100.7:1234"]);
        assert_eq!(
            client_addr(ip("::ffff:127.0.0.1"), &h, &t),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn unknown_peer_is_unknown() {
        assert_eq!(client_addr(None, &headers(&["1.2.3.4"]), &[]), None);
    }
}
