//! What a Nix client's `User-Agent` says it can handle. Used only to offer
//! a client behaviour it is known to cope with, never to refuse one.
//!
//! Nix sends `curl/<v> Nix/<version>`; Lix `… Lix/<version>`.

use axum::http::{HeaderMap, header};

/// The first Nix that retries a `503` with `Retry-After` like a `429`
/// (with jitter) instead of failing, or hanging as 2.8 does on a retried
/// PUT (docs/protocol.md "Staging quota").
const RETRIES_BUSY: (u32, u32) = (2, 35);

/// The Nix version in `headers`' `User-Agent`, as (major, minor).
fn nix_version(headers: &HeaderMap) -> Option<(u32, u32)> {
    let agent = headers.get(header::USER_AGENT)?.to_str().ok()?;
    let version = agent
        .split_ascii_whitespace()
        .find_map(|product| product.strip_prefix("Nix/"))?;
    let mut parts = version.split(['.', 'p', 'r', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether the client retries a `503` with `Retry-After` on its own (Nix
/// ≥ 2.35), so a busy server may ask it to wait.
pub fn retries_busy(headers: &HeaderMap) -> bool {
    nix_version(headers).is_some_and(|v| v >= RETRIES_BUSY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::USER_AGENT, value.parse().expect("header"));
        h
    }

    #[test]
    fn only_nix_from_2_35_is_asked_to_wait() {
        for (ua, retries) in [
            ("curl/7.85.0 Nix/2.8.0", false),
            ("curl/8.13.0 Nix/2.26.3", false),
            ("curl/8.14.1 Nix/2.34.9", false),
            ("curl/8.16.0 Nix/2.35.0", true),
            ("curl/8.16.0 Nix/2.36.0pre20261101_abcdef", true),
            ("curl/8.16.0 Nix/3.0", true),
            ("curl/8.11.1 Lix/2.93.0", false),
            ("attic/0.1", false),
            ("Nix/", false),
            ("", false),
        ] {
            assert_eq!(retries_busy(&agent(ua)), retries, "{ua}");
        }
        assert!(!retries_busy(&HeaderMap::new()));
    }
}
