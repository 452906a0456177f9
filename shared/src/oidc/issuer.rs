//! The signing keys of trusted issuers: OpenID Connect Discovery
//! (`<issuer>/.well-known/openid-configuration`), then its `jwks_uri`,
//! cached per issuer.
//!
//! Bounded on every side, since any caller can make Larder look up a key:
//! only issuers some policy names are ever fetched; each response is at most
//! [`MAX_DOCUMENT`] bytes, each request at most [`FETCH_TIMEOUT`], redirects
//! are not followed (one to plain http would bypass the https rule); a key
//! set is refetched when older than `max_age` (`[oidc] jwks-max-age`, 1 h by
//! default), or when a token names an unknown `kid` (the issuer rotated),
//! but never more than once per `min_refresh` (`[oidc] jwks-min-refresh`,
//! 30 s by default) per issuer, failed attempts included.
//!
//! An issuer that is down must not stop CI pushes at once: when a refetch of
//! a key set fails, keys fetched less than [`MAX_STALE`] ago still verify
//! (a warning is logged). Past that, or for a `kid` the old set lacks, the
//! exchange fails with a 502 until the issuer answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use reqwest::Url;
use serde::Deserialize;

use super::url::{UrlProblem, check_fetch_url};

/// Largest discovery document or JWKS read.
pub const MAX_DOCUMENT: usize = 256 * 1024;
/// Time allowed for one fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Age up to which a key set keeps verifying while its issuer cannot be
/// reached: long enough to ride out an outage, short enough that a key the
/// issuer withdrew stops working within a day even if Larder never reaches
/// it again.
pub const MAX_STALE: Duration = Duration::from_secs(24 * 3600);
/// Smallest RSA modulus accepted (2048 bits).
const MIN_RSA_BYTES: usize = 256;

/// Why an issuer's keys could not be had (the issuer's fault or the
/// network's: a 502, logged, details hidden from the caller).
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// The HTTP request failed.
    #[error("fetching {url}: {source}")]
    Fetch {
        /// What was fetched.
        url: String,
        /// Why it failed.
        source: reqwest::Error,
    },
    /// A status other than 2xx.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// What was fetched.
        url: String,
        /// The status.
        status: u16,
    },
    /// More than [`MAX_DOCUMENT`] bytes.
    #[error("{url} answered more than {MAX_DOCUMENT} bytes")]
    TooLarge {
        /// What was fetched.
        url: String,
    },
    /// Not the JSON document expected.
    #[error("{url} is not a valid document: {message}")]
    Invalid {
        /// What was fetched.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The discovery document names another issuer (OIDC Discovery §4.3).
    #[error("the discovery document of {expected} names issuer {found:?}")]
    IssuerMismatch {
        /// The policy's issuer.
        expected: String,
        /// What the document says.
        found: String,
    },
    /// `jwks_uri` may not be fetched.
    #[error("jwks_uri {uri:?}: {problem}")]
    JwksUri {
        /// The URI.
        uri: String,
        /// Why not.
        problem: UrlProblem,
    },
    /// The last attempt failed less than `min_refresh` ago.
    #[error("the keys of {0} could not be fetched recently; retrying later")]
    RecentlyFailed(String),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// One key of a JWKS. `alg`/`key` are `None` for a key Larder does not
/// accept (another type or curve, or an RSA modulus under 2048 bits), kept
/// so a token naming it is refused as a mismatch, not an unknown `kid`.
#[derive(Debug)]
pub struct PublicKey {
    /// `kid`.
    pub kid: Option<String>,
    /// RS256 for an RSA key, ES256 for a P-256 key.
    pub alg: Option<Algorithm>,
    /// The verifying key.
    pub key: Option<DecodingKey>,
}

/// What [`IssuerKeys::key`] found.
#[derive(Debug)]
pub enum Lookup {
    /// The key to verify with (its type may still not fit the token).
    Found(Arc<PublicKey>),
    /// No such `kid`, even after a refresh (or a refresh was not allowed yet).
    Unknown,
}

#[derive(Default)]
struct Slot {
    keys: Vec<Arc<PublicKey>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
}

/// Key sets by issuer, fetched on demand; one per process, shared.
pub struct IssuerKeys {
    http: reqwest::Client,
    min_refresh: Duration,
    max_age: Duration,
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeys")
            .field("min_refresh", &self.min_refresh)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl IssuerKeys {
    /// A cache that refetches an issuer's keys once they are `max_age` old,
    /// and at most once per `min_refresh`.
    pub fn new(min_refresh: Duration, max_age: Duration) -> Result<Self, IssuerError> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("larder/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(IssuerError::Client)?;
        Ok(Self {
            http,
            min_refresh,
            max_age,
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// The key of `issuer` named `kid` (or its only key for `alg` when the
    /// token names none), fetching or refreshing the key set as allowed.
    pub async fn key(
        &self,
        issuer: &str,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Lookup, IssuerError> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(issuer.to_owned())
            .or_default()
            .clone();
        // One fetch per issuer at a time; other issuers are not held up.
        let mut slot = slot.lock().await;
        let now = Instant::now();
        let age = slot.fetched_at.map(|t| now.duration_since(t));
        let usable = age.is_some_and(|a| a < MAX_STALE);
        if age.is_some_and(|a| a < self.max_age)
            && let Some(key) = find(&slot.keys, kid, alg)
        {
            return Ok(Lookup::Found(key));
        }
        let may_fetch = slot
            .last_attempt
            .is_none_or(|t| now.duration_since(t) >= self.min_refresh);
        if !may_fetch {
            return match find(&slot.keys, kid, alg) {
                Some(key) if usable => Ok(Lookup::Found(key)),
                None if usable => Ok(Lookup::Unknown),
                _ => Err(IssuerError::RecentlyFailed(issuer.to_owned())),
            };
        }
        slot.last_attempt = Some(now);
        let keys = match self.fetch(issuer).await {
            Ok(keys) => keys,
            Err(e) => {
                if usable && let Some(key) = find(&slot.keys, kid, alg) {
                    tracing::warn!(
                        issuer, error = %e, age = ?age.unwrap_or_default(),
                        "could not refetch the issuer's JWKS; verifying with the keys fetched before"
                    );
                    return Ok(Lookup::Found(key));
                }
                return Err(e);
            }
        };
        tracing::info!(issuer, keys = keys.len(), "fetched the issuer's JWKS");
        slot.keys = keys;
        slot.fetched_at = Some(now);
        Ok(find(&slot.keys, kid, alg).map_or(Lookup::Unknown, Lookup::Found))
    }

    async fn fetch(&self, issuer: &str) -> Result<Vec<Arc<PublicKey>>, IssuerError> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        #[derive(Deserialize)]
        struct Jwks {
            keys: Vec<Jwk>,
        }
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let url = check_fetch_url(&discovery_url).map_err(|problem| IssuerError::JwksUri {
            uri: discovery_url.clone(),
            problem,
        })?;
        let discovery: Discovery = self.get_json(url).await?;
        if discovery.issuer != issuer {
            return Err(IssuerError::IssuerMismatch {
                expected: issuer.to_owned(),
                found: discovery.issuer,
            });
        }
        let jwks_url =
            check_fetch_url(&discovery.jwks_uri).map_err(|problem| IssuerError::JwksUri {
                uri: discovery.jwks_uri.clone(),
                problem,
            })?;
        let jwks: Jwks = self.get_json(jwks_url).await?;
        Ok(jwks
            .keys
            .into_iter()
            .filter(|k| k.usage.as_deref().is_none_or(|u| u == "sig"))
            .map(|k| Arc::new(k.into_public_key()))
            .collect())
    }

    /// GETs `url` and parses at most [`MAX_DOCUMENT`] bytes of JSON.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: Url) -> Result<T, IssuerError> {
        let name = url.to_string();
        let fetch = |source| IssuerError::Fetch {
            url: name.clone(),
            source,
        };
        let mut response = self.http.get(url).send().await.map_err(fetch)?;
        if !response.status().is_success() {
            return Err(IssuerError::Status {
                url: name.clone(),
                status: response.status().as_u16(),
            });
        }
        let too_large = || IssuerError::TooLarge { url: name.clone() };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(fetch)? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| IssuerError::Invalid {
            url: name.clone(),
            message: e.to_string(),
        })
    }
}

/// The key named `kid`; without one, the only key of `alg`'s type.
fn find(keys: &[Arc<PublicKey>], kid: Option<&str>, alg: Algorithm) -> Option<Arc<PublicKey>> {
    match kid {
        Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)).cloned(),
        None => {
            let mut of_alg = keys.iter().filter(|k| k.alg == Some(alg));
            match (of_alg.next(), of_alg.next()) {
                (Some(only), None) => Some(only.clone()),
                _ => None,
            }
        }
    }
}

/// The fields of a JWK (RFC 7517, 7518) Larder reads.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

impl Jwk {
    fn into_public_key(self) -> PublicKey {
        let accepted = self.accepted();
        PublicKey {
            kid: self.kid,
            alg: accepted.as_ref().map(|(alg, _)| *alg),
            key: accepted.map(|(_, key)| key),
        }
    }

    /// The algorithm and key, if Larder accepts this JWK: RSA for RS256
    /// (modulus of 2048 bits or more), P-256 for ES256; a JWK's own `alg`,
    /// when present, must agree.
    fn accepted(&self) -> Option<(Algorithm, DecodingKey)> {
        let alg_is = |a: &str| self.alg.as_deref().is_none_or(|alg| alg == a);
        match self.kty.as_str() {
            "RSA" if alg_is("RS256") => {
                let (n, e) = (self.n.as_deref()?, self.e.as_deref()?);
                let modulus = URL_SAFE_NO_PAD.decode(n).ok()?;
                let significant = modulus.iter().skip_while(|b| **b == 0).count();
                if significant < MIN_RSA_BYTES {
                    return None;
                }
                let key = DecodingKey::from_rsa_components(n, e).ok()?;
                Some((Algorithm::RS256, key))
            }
            "EC" if alg_is("ES256") && self.crv.as_deref() == Some("P-256") => {
                let key =
                    DecodingKey::from_ec_components(self.x.as_deref()?, self.y.as_deref()?).ok()?;
                Some((Algorithm::ES256, key))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn jwk(v: serde_json::Value) -> PublicKey {
        serde_json::from_value::<Jwk>(v).unwrap().into_public_key()
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn only_rsa_2048_and_p256_keys_are_accepted() {
        let n = b64(&[0xc5; 256]);
        let e = b64(&[1, 0, 1]);
        let rsa = jwk(json!({"kty": "RSA", "kid": "a", "n": n, "e": e}));
        assert_eq!(
            (rsa.kid.as_deref(), rsa.alg),
            (Some("a"), Some(Algorithm::RS256))
        );
        for rejected in [
            json!({"kty": "RSA", "n": b64(&[0xc5; 128]), "e": e}),
            json!({"kty": "RSA", "n": b64(&[[0u8; 8].as_slice(), &[0xc5; 248]].concat()), "e": e}),
            json!({"kty": "RSA", "alg": "RS512", "n": n, "e": e}),
            json!({"kty": "EC", "crv": "P-384", "x": b64(&[1; 48]), "y": b64(&[2; 48])}),
            json!({"kty": "EC", "crv": "P-256", "alg": "ES384", "x": b64(&[1; 32]), "y": b64(&[2; 32])}),
            json!({"kty": "oct", "k": b64(b"secret")}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&[3; 32])}),
        ] {
            let key = jwk(rejected.clone());
            assert!(key.alg.is_none() && key.key.is_none(), "{rejected}");
        }
    }

    #[test]
    fn a_token_without_kid_needs_a_single_key_of_its_type() {
        let key = |kid: &str, alg| {
            Arc::new(PublicKey {
                kid: Some(kid.into()),
                alg: Some(alg),
                key: None,
            })
        };
        let one_each = [key("r", Algorithm::RS256), key("e", Algorithm::ES256)];
        let found = find(&one_each, None, Algorithm::ES256).unwrap();
        assert_eq!(found.kid.as_deref(), Some("e"));
        assert_eq!(
            find(&one_each, Some("r"), Algorithm::ES256)
                .unwrap()
                .kid
                .as_deref(),
            Some("r")
        );
        assert!(find(&one_each, Some("x"), Algorithm::RS256).is_none());
        let two_rsa = [key("r1", Algorithm::RS256), key("r2", Algorithm::RS256)];
        assert!(find(&two_rsa, None, Algorithm::RS256).is_none());
    }
}
