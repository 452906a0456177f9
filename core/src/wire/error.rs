//! The error body of every failed request, `{"code", "error", "message"}`
//! (docs/protocol.md, "HTTP").

use serde::{Deserialize, Serialize};

/// What a client shows and matches on when a call fails. Larder always sends
/// all three fields; they are options because the client also reads error
/// bodies from proxies and other servers, which may leave some out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The HTTP status again.
    #[serde(default)]
    pub code: Option<u16>,
    /// Stable error kind clients match on, e.g. `NoSuchCache`.
    #[serde(default)]
    pub error: Option<String>,
    /// Human-readable text (the part a user of stock Nix reads).
    #[serde(default)]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        let body = ErrorBody {
            code: Some(404),
            error: Some("NoSuchCache".into()),
            message: Some("no such cache".into()),
        };
        let json = serde_json::to_string(&body).unwrap();
        assert_eq!(
            json,
            r#"{"code":404,"error":"NoSuchCache","message":"no such cache"}"#
        );
        assert_eq!(serde_json::from_str::<ErrorBody>(&json).unwrap(), body);
    }

    #[test]
    fn partial_bodies_parse() {
        let body: ErrorBody = serde_json::from_str(r#"{"message":"bad gateway"}"#).unwrap();
        assert_eq!(body.error, None);
        assert_eq!(body.message.as_deref(), Some("bad gateway"));
    }
}
