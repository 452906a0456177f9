//! Trust policies: which CI identity tokens may be exchanged, and for what
//! (docs/operations.md "Secretless CI with OIDC").
//!
//! A policy names one issuer and one audience, matches claims of the ID
//! token by glob patterns, and grants cache patterns with the permissions
//! of `larder-admin make-token`'s flags, for at most `max-validity`.
//! Policies come from `[[oidc.policy]]` in the config file and from
//! `larder-admin oidc add` (the `oidc_policies` table); names are unique
//! across both.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::url::{UrlProblem, check_fetch_url};
use crate::config::ConfigDuration;
use crate::token::{CacheAccess, CachePattern, Permission, glob_match};

/// Default `max-validity`: long enough for a CI job's push, short enough
/// that a leaked token soon stops mattering.
pub const DEFAULT_MAX_VALIDITY: Duration = Duration::from_secs(3600);

/// Longest `max-validity` a policy may set.
pub const MAX_MAX_VALIDITY: Duration = Duration::from_secs(86_400);

/// Patterns one claim of the ID token must match: any one of them. `*` is
/// any run of characters (`/` included), `?` exactly one character.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClaimPattern {
    /// `ref = "refs/heads/main"`.
    One(String),
    /// `ref = ["refs/heads/main", "refs/tags/v*"]`.
    Any(Vec<String>),
}

impl ClaimPattern {
    /// The patterns, whichever way they were written.
    pub fn patterns(&self) -> &[String] {
        match self {
            Self::One(p) => std::slice::from_ref(p),
            Self::Any(ps) => ps,
        }
    }

    /// Whether a claim's value matches: strings as they are, numbers and
    /// booleans by their JSON text (GitLab's `project_id` is a string, but
    /// other issuers send numbers); anything else, or no claim, never.
    pub fn matches(&self, value: Option<&Value>) -> bool {
        let text = match value {
            Some(Value::String(s)) => s.clone(),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
            _ => return false,
        };
        let text: Vec<char> = text.chars().collect();
        self.patterns().iter().any(|p| {
            let p: Vec<char> = p.chars().collect();
            glob_match(&p, &text, '*', '?')
        })
    }
}

/// A policy as written in `[[oidc.policy]]` (and as `oidc add` takes it):
/// grants as lists of cache patterns per permission, like make-token's flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PolicyConfig {
    /// Unique name; part of the minted token's subject.
    pub name: String,
    /// The issuer URL, exactly as the ID token's `iss` says it.
    pub issuer: String,
    /// The audience the ID token must name in `aud`.
    pub audience: String,
    /// Claim name → patterns; every claim listed must match.
    pub claims: BTreeMap<String, ClaimPattern>,
    /// Caches the minted token may pull from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull: Vec<CachePattern>,
    /// Caches it may push to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub push: Vec<CachePattern>,
    /// Caches it may delete paths from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete: Vec<CachePattern>,
    /// Caches it may create.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub create_cache: Vec<CachePattern>,
    /// Caches it may configure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configure_cache: Vec<CachePattern>,
    /// Caches whose retention it may configure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configure_cache_retention: Vec<CachePattern>,
    /// Caches it may destroy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destroy_cache: Vec<CachePattern>,
    /// Longest life of a minted token, counted from the ID token's `iat`.
    #[serde(default = "default_max_validity")]
    pub max_validity: ConfigDuration,
}

fn default_max_validity() -> ConfigDuration {
    ConfigDuration::from_secs(DEFAULT_MAX_VALIDITY.as_secs())
}

impl PolicyConfig {
    /// The grants as a token's `caches` claim, in make-token's order
    /// (every pull pattern, then push, …; one entry per pattern).
    pub fn caches(&self) -> CacheAccess {
        let groups = [
            (Permission::Pull, &self.pull),
            (Permission::Push, &self.push),
            (Permission::Delete, &self.delete),
            (Permission::CreateCache, &self.create_cache),
            (Permission::ConfigureCache, &self.configure_cache),
            (
                Permission::ConfigureCacheRetention,
                &self.configure_cache_retention,
            ),
            (Permission::DestroyCache, &self.destroy_cache),
        ];
        let mut access = CacheAccess::default();
        for (permission, patterns) in groups {
            for p in patterns {
                access.grant(p.clone(), permission);
            }
        }
        access
    }

    /// Every problem with this policy, each prefixed with `at` (e.g.
    /// `oidc.policy[0]`), for [`crate::config::Config::validate`] and `oidc add`.
    pub fn problems(&self, at: &str, problems: &mut Vec<String>) {
        if !valid_name(&self.name) {
            problems.push(format!(
                "{at}.name: {:?} must be 1 to 64 letters, digits, `-`, `_` or `.`",
                self.name
            ));
        }
        match check_fetch_url(&self.issuer) {
            Ok(_) => {}
            Err(UrlProblem::Invalid(e)) => {
                problems.push(format!("{at}.issuer: {:?} is not a URL: {e}", self.issuer))
            }
            Err(UrlProblem::NotHttps) => problems.push(format!(
                "{at}.issuer: {:?} must be https:// (http:// only for a loopback issuer)",
                self.issuer
            )),
        }
        if self.audience.trim().is_empty() {
            problems.push(format!("{at}.audience: must not be empty"));
        }
        if self.claims.is_empty() {
            problems.push(format!(
                "{at}.claims: name at least one claim to match (e.g. repository): \
                 without one, every job the issuer serves would be trusted"
            ));
        }
        for (claim, pattern) in &self.claims {
            if pattern.patterns().is_empty() || pattern.patterns().iter().any(|p| p.is_empty()) {
                problems.push(format!("{at}.claims.{claim}: patterns must not be empty"));
            }
        }
        if self.caches().is_empty() {
            problems.push(format!(
                "{at}: grants nothing; add pull, push, … cache patterns"
            ));
        }
        let v = self.max_validity.get();
        if v < Duration::from_secs(60) || v > MAX_MAX_VALIDITY {
            problems.push(format!(
                "{at}.max-validity: {:?} must be between 1 minute and 1 day",
                self.max_validity
            ));
        }
    }

    /// The policy as the exchange uses it.
    pub fn to_policy(&self) -> TrustPolicy {
        TrustPolicy {
            name: self.name.clone(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            claims: self.claims.clone(),
            caches: self.caches(),
            max_validity: self.max_validity.get(),
        }
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A policy ready to match: its grants already a `caches` claim. What the
/// database stores, and what config policies become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustPolicy {
    /// Unique name.
    pub name: String,
    /// Issuer URL (`iss` must equal it).
    pub issuer: String,
    /// Required audience.
    pub audience: String,
    /// Claim matchers, all of which must match.
    pub claims: BTreeMap<String, ClaimPattern>,
    /// What the minted token grants.
    pub caches: CacheAccess,
    /// Longest life of a minted token.
    pub max_validity: Duration,
}

impl TrustPolicy {
    /// The claims of `token` that do not match, in claim-name order.
    pub fn mismatches<'a>(&'a self, token: &serde_json::Map<String, Value>) -> Vec<&'a str> {
        self.claims
            .iter()
            .filter(|(name, pattern)| !pattern.matches(token.get(name.as_str())))
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(extra: &str) -> PolicyConfig {
        toml::from_str(&format!(
            "name = \"infra\"\nissuer = \"https://token.actions.githubusercontent.com\"\n\
             audience = \"https://cache.example.com\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn claim_patterns_glob_over_whole_values() {
        let p = ClaimPattern::One("snyssen/*".into());
        assert!(p.matches(Some(&json!("snyssen/infra"))));
        assert!(p.matches(Some(&json!("snyssen/a/b"))));
        assert!(!p.matches(Some(&json!("other/infra"))));
        assert!(!p.matches(Some(&json!("xsnyssen/infra"))));
        assert!(!p.matches(None));
        assert!(!p.matches(Some(&json!(["snyssen/infra"]))));
        let any = ClaimPattern::Any(vec!["refs/heads/main".into(), "refs/tags/v?".into()]);
        assert!(any.matches(Some(&json!("refs/tags/v1"))));
        assert!(!any.matches(Some(&json!("refs/tags/v10"))));
        assert!(ClaimPattern::One("42".into()).matches(Some(&json!(42))));
        assert!(ClaimPattern::One("caf?".into()).matches(Some(&json!("café"))));
    }

    #[test]
    fn grants_follow_make_token_order() {
        let c = config(
            "claims = { repository = \"snyssen/infra\" }\n\
             push = [\"snyssen-*\"]\npull = [\"public\", \"snyssen-*\"]\n",
        );
        assert_eq!(
            serde_json::to_string(&c.caches()).unwrap(),
            r#"{"public":{"r":1},"snyssen-*":{"r":1,"w":1}}"#
        );
        assert_eq!(c.max_validity.get(), DEFAULT_MAX_VALIDITY);
        let mut problems = Vec::new();
        c.problems("p", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn problems_are_named() {
        let mut c = config("claims = {}\nmax-validity = \"2 days\"\n");
        c.issuer = "http://issuer.example.com".into();
        c.name = "bad name".into();
        let mut problems = Vec::new();
        c.problems("oidc.policy[0]", &mut problems);
        let text = problems.join("\n");
        for needle in [
            ".name",
            ".issuer",
            ".claims",
            "grants nothing",
            ".max-validity",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        assert!(toml::from_str::<PolicyConfig>("name = \"x\"\nsurprise = 1").is_err());
    }

    #[test]
    fn mismatches_name_the_failing_claims() {
        let c = config(
            "claims = { repository = \"snyssen/infra\", ref = \"refs/heads/main\" }\n\
             push = [\"x\"]\n",
        )
        .to_policy();
        let token = json!({"repository": "snyssen/infra", "ref": "refs/heads/dev"});
        assert_eq!(c.mismatches(token.as_object().unwrap()), ["ref"]);
    }
}
