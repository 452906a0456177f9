//! `[oidc]`: trust policies for CI identity tokens (docs/operations.md
//! "Secretless CI with OIDC"); the policies themselves are
//! [`crate::oidc::PolicyConfig`].

use serde::{Deserialize, Serialize};

use super::ConfigDuration;
use crate::oidc::{PolicyConfig, TrustPolicy};

/// `[oidc]` with its `[[oidc.policy]]` tables.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct OidcConfig {
    /// Least time between two fetches of one issuer's JWKS, when tokens
    /// name a key it does not know: bounds what strangers can make Larder
    /// fetch.
    #[serde(default = "d_min_refresh")]
    pub jwks_min_refresh: ConfigDuration,
    /// Age after which an issuer's key set is fetched again even if every
    /// `kid` is known; if that fetch fails, the old set keeps verifying for
    /// up to a day ([`crate::oidc::issuer::MAX_STALE`]).
    #[serde(default = "d_max_age")]
    pub jwks_max_age: ConfigDuration,
    /// Policies in the file, tried before those `larder-admin oidc add`
    /// stored, in this order.
    #[serde(default, rename = "policy", skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyConfig>,
}

fn d_min_refresh() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}

fn d_max_age() -> ConfigDuration {
    ConfigDuration::from_secs(3600)
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            jwks_min_refresh: d_min_refresh(),
            jwks_max_age: d_max_age(),
            policies: Vec::new(),
        }
    }
}

impl OidcConfig {
    /// The file's policies, ready to match.
    pub fn trust_policies(&self) -> Vec<TrustPolicy> {
        self.policies.iter().map(PolicyConfig::to_policy).collect()
    }

    /// Every problem: each policy's, and names used twice.
    pub fn problems(&self, problems: &mut Vec<String>) {
        for (i, policy) in self.policies.iter().enumerate() {
            let at = format!("oidc.policy[{i}]");
            policy.problems(&at, problems);
            if self.policies[..i].iter().any(|p| p.name == policy.name) {
                problems.push(format!("{at}.name: {:?} is used twice", policy.name));
            }
        }
    }
}
