//! How Larder connects to PostgreSQL: the URL's options, and no TLS to a
//! server on this host unless the URL (or `PGSSLMODE`) asks for it.
//!
//! Why: the driver's default, `sslmode=prefer`, negotiated TLS with every
//! server that offers it, Debian's default local cluster included, and each
//! new connection then took about 90 ms instead of 2 (measured: a
//! `larder-api` start 0.22–0.33 s against 0.06 s, most of it its first two
//! connections; a pool grows a connection at a time while the first jobs
//! wait). On a loopback address or a Unix socket TLS protects nothing that
//! the host's own users could not read anyway. A server that requires TLS
//! even locally (`hostssl` in `pg_hba.conf`) refuses the plain connection
//! with its own message; `?sslmode=require` in the URL restores TLS.

use std::net::IpAddr;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// The connect options of `url`, TLS off for a local server when nothing
/// asked for an `sslmode`.
pub(super) fn pg_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    let asked = names_ssl_mode(url) || std::env::var_os("PGSSLMODE").is_some();
    Ok(if !asked && is_local(options.get_host()) {
        options.ssl_mode(PgSslMode::Disable)
    } else {
        options
    })
}

/// Whether the URL's query sets the mode (`sslmode` or `ssl-mode`).
fn names_ssl_mode(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .filter_map(|pair| pair.split('=').next())
            .any(|key| key.eq_ignore_ascii_case("sslmode") || key.eq_ignore_ascii_case("ssl-mode"))
    })
}

/// A Unix socket directory, `localhost`, or a loopback address.
fn is_local(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || IpAddr::from_str(host).is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str) -> PgSslMode {
        pg_options(url).unwrap().get_ssl_mode()
    }

    #[test]
    fn local_servers_get_no_tls_unless_asked() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/larder",
            "postgres://postgres@localhost/larder",
            "postgresql://postgres@[::1]:5432/larder",
            "postgres://postgres@127.0.0.1/larder?application_name=x",
            "postgres:///larder?host=/run/postgresql",
        ] {
            assert!(matches!(mode(url), PgSslMode::Disable), "{url}");
        }
        for url in [
            "postgres://postgres@127.0.0.1/larder?sslmode=require",
            "postgres://postgres@127.0.0.1/larder?application_name=x&sslmode=prefer",
        ] {
            assert!(!matches!(mode(url), PgSslMode::Disable), "{url}");
        }
    }

    #[test]
    fn remote_servers_keep_the_default() {
        assert!(matches!(
            mode("postgres://larder@db.example.org/larder"),
            PgSslMode::Prefer
        ));
        assert!(matches!(
            mode("postgres://larder@10.0.0.5/larder"),
            PgSslMode::Prefer
        ));
    }
}
