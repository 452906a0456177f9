//! An ID token before and after its signature is checked: the compact JWS
//! split into header, claims and signature, the algorithm pinned to RS256
//! or ES256 before anything else is looked at.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::OidcError;
use super::issuer::PublicKey;
use crate::token::LEEWAY_SECS;

/// Longest ID token accepted; GitHub's are about 1.5 KiB.
pub const MAX_ID_TOKEN_LEN: usize = 16 * 1024;

/// A parsed, not yet verified, ID token.
#[derive(Debug)]
pub struct IdToken<'a> {
    /// RS256 or ES256.
    pub alg: Algorithm,
    /// The JWKS key it names.
    pub kid: Option<String>,
    /// The claims (untrusted until [`IdToken::verify_signature`]).
    pub claims: Map<String, Value>,
    signed: &'a str,
    signature: &'a str,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

impl<'a> IdToken<'a> {
    /// Splits and decodes `token`; refuses any algorithm but RS256 and ES256.
    pub fn parse(token: &'a str) -> Result<Self, OidcError> {
        if token.len() > MAX_ID_TOKEN_LEN {
            return Err(OidcError::Malformed("longer than 16 KiB"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(OidcError::Malformed("not three base64url parts"));
        };
        let header: Header = decode(header)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(OidcError::Malformed(
                "header is not base64url JSON with `alg`",
            ))?;
        let alg = match header.alg.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => return Err(OidcError::AlgorithmNotAccepted),
        };
        if header.crit.is_some() {
            // RFC 7515 §4.1.11: extensions we do not understand must be refused.
            return Err(OidcError::Malformed("unsupported critical header"));
        }
        let claims: Map<String, Value> = decode(payload)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(OidcError::Malformed(
                "payload is not a base64url JSON object",
            ))?;
        Ok(Self {
            alg,
            kid: header.kid,
            claims,
            signed: &token[..header_len(token, payload)],
            signature,
        })
    }

    /// The `iss` claim, if it is a string.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    /// Checks the signature with `key`, which must be a key of the token's algorithm.
    pub fn verify_signature(&self, key: &PublicKey) -> Result<(), OidcError> {
        if key.alg != Some(self.alg) {
            return Err(OidcError::KeyMismatch);
        }
        let key = key.key.as_ref().ok_or(OidcError::KeyMismatch)?;
        match jsonwebtoken::crypto::verify(self.signature, self.signed.as_bytes(), key, self.alg) {
            Ok(true) => Ok(()),
            _ => Err(OidcError::SignatureInvalid),
        }
    }

    /// `exp` (required), `nbf` and `iat` at `now`, with [`LEEWAY_SECS`] of skew.
    pub fn check_times(&self, now: u64) -> Result<(), OidcError> {
        let exp = self.time("exp")?.ok_or(OidcError::MissingExpiry)?;
        if now > exp.saturating_add(LEEWAY_SECS) {
            return Err(OidcError::Expired);
        }
        let latest_start = now.saturating_add(LEEWAY_SECS);
        for claim in ["nbf", "iat"] {
            if self.time(claim)?.is_some_and(|t| t > latest_start) {
                return Err(OidcError::NotYetValid);
            }
        }
        Ok(())
    }

    /// A NumericDate claim (fractions truncated); malformed if not a number.
    pub fn time(&self, claim: &'static str) -> Result<Option<u64>, OidcError> {
        match self.claims.get(claim) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| *f >= 0.0 && f.is_finite())
                        .map(|f| f as u64)
                })
                .map(Some)
                .ok_or(OidcError::Malformed("a time claim is not a number")),
        }
    }

    /// Whether `aud` (a string or an array) names `audience`.
    pub fn has_audience(&self, audience: &str) -> bool {
        match self.claims.get("aud") {
            Some(Value::String(a)) => a == audience,
            Some(Value::Array(many)) => many.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        }
    }
}

fn decode(part: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(part).ok()
}

/// Length of `header.payload`, the signed text.
fn header_len(token: &str, payload: &str) -> usize {
    token.find('.').map_or(0, |dot| dot + 1 + payload.len())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn token(header: Value, claims: Value) -> String {
        format!("{}.{}.c2ln", b64(&header), b64(&claims))
    }

    #[test]
    fn only_rs256_and_es256_parse() {
        for alg in ["RS256", "ES256"] {
            let t = token(json!({"alg": alg, "kid": "k"}), json!({"iss": "i"}));
            let parsed = IdToken::parse(&t).unwrap();
            assert_eq!(parsed.kid.as_deref(), Some("k"));
            assert_eq!(parsed.issuer(), Some("i"));
            assert_eq!(parsed.signed, &t[..t.rfind('.').unwrap()]);
        }
        for alg in ["none", "HS256", "RS384", "PS256", "EdDSA", "rs256", ""] {
            let t = token(json!({"alg": alg}), json!({}));
            assert!(
                matches!(IdToken::parse(&t), Err(OidcError::AlgorithmNotAccepted)),
                "{alg}"
            );
        }
    }

    #[test]
    fn malformed_tokens() {
        let crit = token(json!({"alg": "RS256", "crit": ["x"]}), json!({}));
        let array = token(json!({"alg": "RS256"}), json!([1]));
        let long = "a".repeat(MAX_ID_TOKEN_LEN + 1);
        for t in ["", "a.b", "a.b.c.d", "***.b.c", &crit, &array, &long] {
            assert!(
                matches!(IdToken::parse(t), Err(OidcError::Malformed(_))),
                "{t}"
            );
        }
    }

    #[test]
    fn times_and_audience() {
        let now = 1_700_000_000;
        let t = token(
            json!({"alg": "ES256"}),
            json!({"exp": now, "iat": now + LEEWAY_SECS, "aud": ["a", "b"]}),
        );
        let parsed = IdToken::parse(&t).unwrap();
        parsed.check_times(now).unwrap();
        assert!(matches!(
            parsed.check_times(now + LEEWAY_SECS + 1),
            Err(OidcError::Expired)
        ));
        assert!(matches!(
            parsed.check_times(now - 1),
            Err(OidcError::NotYetValid)
        ));
        assert!(parsed.has_audience("b") && !parsed.has_audience("c"));
        let no_exp = token(json!({"alg": "ES256"}), json!({"aud": "a"}));
        let parsed = IdToken::parse(&no_exp).unwrap();
        assert!(matches!(
            parsed.check_times(now),
            Err(OidcError::MissingExpiry)
        ));
        assert!(parsed.has_audience("a"));
    }
}
