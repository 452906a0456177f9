//! `larder login --oidc NAME ENDPOINT`: the CI job's identity token, from
//! wherever its CI system puts it, exchanged for a short-lived Larder token
//! (docs/operations.md "Secretless CI with OIDC").
//!
//! Where the ID token comes from, first found wins:
//! 1. `--id-token-file PATH`, or `--id-token-env VAR`;
//! 2. GitHub Actions: a GET to `$ACTIONS_ID_TOKEN_REQUEST_URL&audience=AUD`
//!    with `Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN` (set on
//!    jobs with `permissions: id-token: write`), answering `{"value": JWT}`;
//! 3. `$LARDER_OIDC_TOKEN` (GitLab's `id_tokens`, Buildkite, Forgejo…).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::api::{ApiClient, ApiError};

/// The variable read when nothing else names the ID token.
pub const DEFAULT_TOKEN_ENV: &str = "LARDER_OIDC_TOKEN";
/// GitHub Actions' token request URL.
pub const GITHUB_REQUEST_URL: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
/// GitHub Actions' bearer token for that request.
pub const GITHUB_REQUEST_TOKEN: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";
/// Time allowed for the runner to answer.
const RUNNER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why no Larder token could be had.
#[derive(Debug, thiserror::Error)]
pub enum OidcLoginError {
    /// Nothing names an ID token.
    #[error(
        "no CI identity token: on GitHub Actions give the job `permissions: id-token: write`; \
         elsewhere pass --id-token-file or --id-token-env, or set ${DEFAULT_TOKEN_ENV}"
    )]
    NoIdToken,
    /// The named file or variable is unreadable or empty.
    #[error("cannot read the ID token from {from}: {reason}")]
    Read {
        /// The file or variable.
        from: String,
        /// Why.
        reason: String,
    },
    /// The GitHub runner's token service failed.
    #[error("requesting the job's ID token from the GitHub Actions runner: {0}")]
    Runner(String),
    /// The exchange itself.
    #[error("exchanging the ID token: {0}")]
    Exchange(#[from] ApiError),
}

/// Where the ID token is to be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdTokenSource {
    /// A file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// The GitHub Actions runner.
    GitHub {
        /// `$ACTIONS_ID_TOKEN_REQUEST_URL`.
        url: String,
        /// `$ACTIONS_ID_TOKEN_REQUEST_TOKEN`.
        bearer: String,
    },
}

impl IdTokenSource {
    /// Picks the source as the module doc orders them; `env` is a parameter
    /// so tests need not touch the process environment.
    pub fn pick(
        file: Option<PathBuf>,
        var: Option<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, OidcLoginError> {
        if let Some(path) = file {
            return Ok(Self::File(path));
        }
        if let Some(var) = var {
            return Ok(Self::Env(var));
        }
        if let (Some(url), Some(bearer)) = (env(GITHUB_REQUEST_URL), env(GITHUB_REQUEST_TOKEN)) {
            return Ok(Self::GitHub { url, bearer });
        }
        if env(DEFAULT_TOKEN_ENV).is_some() {
            return Ok(Self::Env(DEFAULT_TOKEN_ENV.into()));
        }
        Err(OidcLoginError::NoIdToken)
    }

    /// The ID token, requested for `audience` where the source takes one.
    pub async fn read(
        &self,
        audience: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<String, OidcLoginError> {
        let token = match self {
            Self::File(path) => {
                std::fs::read_to_string(path).map_err(|e| OidcLoginError::Read {
                    from: path.display().to_string(),
                    reason: e.to_string(),
                })?
            }
            Self::Env(var) => env(var).unwrap_or_default(),
            Self::GitHub { url, bearer } => github_token(url, bearer, audience).await?,
        };
        let token = token.trim();
        if token.is_empty() {
            let from = match self {
                Self::File(path) => path.display().to_string(),
                Self::Env(var) => format!("${var}"),
                Self::GitHub { .. } => "the GitHub Actions runner".into(),
            };
            return Err(OidcLoginError::Read {
                from,
                reason: "it is empty".into(),
            });
        }
        Ok(token.to_owned())
    }
}

/// Asks the GitHub Actions runner for the job's ID token.
async fn github_token(url: &str, bearer: &str, audience: &str) -> Result<String, OidcLoginError> {
    #[derive(Deserialize)]
    struct Answer {
        value: String,
    }
    let runner = |e: &dyn std::fmt::Display| OidcLoginError::Runner(e.to_string());
    let mut url = reqwest::Url::parse(url).map_err(|e| runner(&e))?;
    url.query_pairs_mut().append_pair("audience", audience);
    let http = reqwest::Client::builder()
        .timeout(RUNNER_TIMEOUT)
        .build()
        .map_err(|e| runner(&e))?;
    let response = http
        .get(url)
        .header(reqwest::header::AUTHORIZATION, format!("bearer {bearer}"))
        .send()
        .await
        .map_err(|e| runner(&e))?;
    if !response.status().is_success() {
        return Err(runner(&format!("HTTP {}", response.status())));
    }
    let answer: Answer = response.json().await.map_err(|e| runner(&e))?;
    Ok(answer.value)
}

/// Exchanges `id_token` at `endpoint`.
pub async fn exchange(
    endpoint: &str,
    id_token: &str,
) -> Result<larder_core::wire::OidcExchangeResponse, OidcLoginError> {
    let api = ApiClient::new(endpoint, None)?;
    Ok(api.oidc_exchange(id_token).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn sources_in_order() {
        let github = [
            (GITHUB_REQUEST_URL, "http://r/t?x=1"),
            (GITHUB_REQUEST_TOKEN, "b"),
        ];
        let both = [github[0], github[1], (DEFAULT_TOKEN_ENV, "jwt")];
        let file = Some(PathBuf::from("/f"));
        assert_eq!(
            IdTokenSource::pick(file, Some("V".into()), env(&both)).unwrap(),
            IdTokenSource::File("/f".into())
        );
        assert_eq!(
            IdTokenSource::pick(None, Some("V".into()), env(&both)).unwrap(),
            IdTokenSource::Env("V".into())
        );
        assert!(matches!(
            IdTokenSource::pick(None, None, env(&both)).unwrap(),
            IdTokenSource::GitHub { .. }
        ));
        assert_eq!(
            IdTokenSource::pick(None, None, env(&both[2..])).unwrap(),
            IdTokenSource::Env(DEFAULT_TOKEN_ENV.into())
        );
        assert!(matches!(
            IdTokenSource::pick(None, None, env(&github[..1])),
            Err(OidcLoginError::NoIdToken)
        ));
    }

    #[tokio::test]
    async fn empty_tokens_are_refused() {
        let source = IdTokenSource::Env("T".into());
        assert_eq!(
            source.read("a", env(&[("T", " jwt\n")])).await.unwrap(),
            "jwt"
        );
        let err = source.read("a", env(&[("T", " ")])).await.unwrap_err();
        assert!(err.to_string().contains("$T"), "{err}");
    }
}
