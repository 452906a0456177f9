//! Who may read `/metrics`: `[metrics] token`, checked the same way by every
//! process that serves it.

use crate::config::Secret;

/// What a `/metrics` request may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token is configured: open, private caches folded into one label.
    Open,
    /// The configured token was presented: everything, private caches named.
    Full,
    /// A token is configured and the request did not present it.
    Refused,
}

/// Checks the `Authorization` header value against `token`
/// (`Bearer <token>`, compared in constant time so response timing does not
/// reveal how much of a guess was right).
pub fn check(token: Option<&Secret>, authorization: Option<&str>) -> Access {
    let Some(token) = token else {
        return Access::Open;
    };
    let given = authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
        Access::Full
    } else {
        Access::Refused
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"token", b"token"));
        assert!(!constant_time_eq(b"token", b"tokem"));
        assert!(!constant_time_eq(b"token", b"token2"));
        assert!(!constant_time_eq(b"", b"t"));
    }

    #[test]
    fn a_configured_token_must_be_presented_as_bearer() {
        let token = Secret::new("s3cret");
        assert_eq!(check(None, None), Access::Open);
        assert_eq!(check(None, Some("Bearer anything")), Access::Open);
        assert_eq!(check(Some(&token), Some("Bearer s3cret")), Access::Full);
        assert_eq!(check(Some(&token), None), Access::Refused);
        assert_eq!(check(Some(&token), Some("s3cret")), Access::Refused);
        assert_eq!(check(Some(&token), Some("Bearer s3cre")), Access::Refused);
        assert_eq!(check(Some(&token), Some("Basic s3cret")), Access::Refused);
    }
}
