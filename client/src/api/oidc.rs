//! `POST /_api/v1/oidc/exchange` (docs/protocol.md "OIDC exchange").

use reqwest::Method;

use larder_core::wire::{OidcExchangeRequest, OidcExchangeResponse};

use super::{ApiClient, ApiError};

impl ApiClient {
    /// A CI job's identity token for a short-lived Larder token. Sent once:
    /// each exchange mints (and records) a new token.
    pub async fn oidc_exchange(&self, id_token: &str) -> Result<OidcExchangeResponse, ApiError> {
        let body = OidcExchangeRequest {
            token: id_token.to_owned(),
        };
        self.run(false, Method::POST, "oidc/exchange", Some(&body))
            .await
    }
}
