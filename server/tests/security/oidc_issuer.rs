//! A local OIDC issuer on loopback for `oidc.rs`: OpenID Connect Discovery
//! and a JWKS over plain http (allowed for loopback issuers only), RS256
//! and ES256 signing keys that can be rotated, and GitHub Actions' token
//! request endpoint (`/token?audience=…` with the runner's bearer).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use serde_json::{Value, json};

use larder_shared::db::unix_now;
use larder_shared::token::TokenKey;

/// What the GitHub runner's token endpoint wants as bearer.
pub const RUNNER_SECRET: &str = "runner-request-token";

/// A signing key with its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    /// `kid`.
    pub kid: String,
    /// RS256 or ES256.
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// The public half, as published.
    pub jwk: Jwk,
}

impl SigningKey {
    /// A fresh 2048-bit RSA key.
    pub fn rsa(kid: &str) -> Self {
        let pem_b64 = TokenKey::generate_rs256().expect("RSA key");
        let pem = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, pem_b64)
            .expect("base64 PEM");
        Self::new(
            kid,
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&pem).expect("RSA PEM"),
        )
    }

    /// A fresh P-256 key.
    pub fn ec(kid: &str) -> Self {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let der = secret.to_pkcs8_der().expect("PKCS#8");
        Self::new(
            kid,
            Algorithm::ES256,
            EncodingKey::from_ec_der(der.as_bytes()),
        )
    }

    fn new(kid: &str, alg: Algorithm, encoding: EncodingKey) -> Self {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).expect("public JWK");
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            alg,
            encoding,
            jwk,
        }
    }

    /// Signs `claims` with header `{"alg", "kid", "typ": "JWT"}`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing")
    }

    /// Signs with this key but names another `kid` and algorithm in the header.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing")
    }
}

struct Shared {
    url: String,
    published: Mutex<Vec<SigningKey>>,
    jwks_fetches: AtomicUsize,
    /// The JWKS answers 503 (an outage).
    jwks_down: AtomicBool,
    /// What `/token` signs (with the first published key), `aud` added.
    runner_claims: Mutex<Value>,
    /// The audiences `/token` was asked for.
    runner_audiences: Mutex<Vec<String>>,
}

/// The issuer; serves until the test's runtime ends.
#[derive(Clone)]
pub struct TestIssuer {
    shared: Arc<Shared>,
}

impl TestIssuer {
    /// Starts serving `keys` on a loopback port.
    pub async fn start(keys: Vec<SigningKey>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("loopback port");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let shared = Arc::new(Shared {
            url,
            published: Mutex::new(keys),
            jwks_fetches: AtomicUsize::new(0),
            jwks_down: AtomicBool::new(false),
            runner_claims: Mutex::new(json!({})),
            runner_audiences: Mutex::new(Vec::new()),
        });
        let router = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/token", get(runner_token))
            .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { shared }
    }

    /// `http://127.0.0.1:PORT`: the issuer (`iss`) of its tokens.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// Publishes `keys` instead of the current ones (a rotation).
    pub fn publish(&self, keys: Vec<SigningKey>) {
        *self.shared.published.lock().unwrap() = keys;
    }

    /// Takes the JWKS down (503) or brings it back.
    pub fn set_jwks_down(&self, down: bool) {
        self.shared.jwks_down.store(down, Ordering::SeqCst);
    }

    /// How many times the JWKS was fetched (or asked for while down).
    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// What the runner endpoint signs (it adds `aud`).
    pub fn set_runner_claims(&self, claims: Value) {
        *self.shared.runner_claims.lock().unwrap() = claims;
    }

    /// The audiences the runner endpoint was asked for.
    pub fn runner_audiences(&self) -> Vec<String> {
        self.shared.runner_audiences.lock().unwrap().clone()
    }

    /// GitHub-shaped claims from this issuer for `aud`, valid for five minutes.
    pub fn claims(&self, aud: &str, repository: &str, git_ref: &str) -> Value {
        let now = unix_now() as u64;
        json!({
            "iss": self.url(),
            "aud": aud,
            "sub": format!("repo:{repository}:ref:{git_ref}"),
            "repository": repository,
            "ref": git_ref,
            "repository_owner": repository.split('/').next().unwrap_or_default(),
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        })
    }
}

async fn discovery(State(s): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({
        "issuer": s.url,
        "jwks_uri": format!("{}/jwks", s.url),
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    }))
}

async fn jwks(State(s): State<Arc<Shared>>) -> Result<Json<JwkSet>, StatusCode> {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if s.jwks_down.load(Ordering::SeqCst) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let keys = s
        .published
        .lock()
        .unwrap()
        .iter()
        .map(|k| k.jwk.clone())
        .collect();
    Ok(Json(JwkSet { keys }))
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    audience: Option<String>,
}

/// GitHub's runner: `GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=AUD` with
/// `Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN` → `{"value": JWT}`.
async fn runner_token(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Result<Json<Value>, StatusCode> {
    let expected = format!("bearer {RUNNER_SECRET}");
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&expected)
    {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let audience = q.audience.ok_or(StatusCode::BAD_REQUEST)?;
    s.runner_audiences.lock().unwrap().push(audience.clone());
    let mut claims = s.runner_claims.lock().unwrap().clone();
    claims["aud"] = json!(audience);
    let key = s
        .published
        .lock()
        .unwrap()
        .first()
        .cloned()
        .ok_or(StatusCode::GONE)?;
    Ok(Json(json!({ "count": 1, "value": key.sign(&claims) })))
}
