//! Which URLs Larder fetches an issuer's keys from: https only, except an
//! issuer on a loopback address (a test issuer, or one on the same host),
//! which may use plain http. A man in the middle of a plain-http JWKS fetch
//! could mint any identity, so no other exception exists.

use std::net::IpAddr;

use reqwest::Url;

/// Why a URL may not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    /// Not an absolute URL.
    #[error("invalid URL: {0}")]
    Invalid(String),
    /// http:// to a host that is not loopback, or another scheme.
    #[error("not https:// (plain http is allowed only for loopback issuers)")]
    NotHttps,
}

/// Parses `text` and checks that Larder may fetch it.
pub fn check_fetch_url(text: &str) -> Result<Url, UrlProblem> {
    let url = Url::parse(text).map_err(|e| UrlProblem::Invalid(e.to_string()))?;
    if url.host().is_none() {
        return Err(UrlProblem::Invalid("no host".into()));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        _ => Err(UrlProblem::NotHttps),
    }
}

fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_anywhere_http_only_on_loopback() {
        for ok in [
            "https://token.actions.githubusercontent.com",
            "https://gitlab.example.com/",
            "http://127.0.0.1:8080",
            "http://127.5.0.1/x",
            "http://[::1]:9000",
            "http://localhost:1234",
        ] {
            assert!(check_fetch_url(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("http://issuer.example.com", UrlProblem::NotHttps),
            ("http://10.0.0.1", UrlProblem::NotHttps),
            ("ftp://127.0.0.1", UrlProblem::NotHttps),
            ("file:///etc/passwd", UrlProblem::Invalid("no host".into())),
        ] {
            assert_eq!(check_fetch_url(bad).unwrap_err(), why, "{bad}");
        }
        assert!(matches!(
            check_fetch_url("not a url"),
            Err(UrlProblem::Invalid(_))
        ));
    }
}
