//! `oidc add|list|remove`: trust policies for CI identity tokens stored in
//! the database, beside those of the config file's `[[oidc.policy]]`
//! (docs/operations.md "Secretless CI with OIDC").

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use larder_shared::audit::{Actor, AuditEvent};
use larder_shared::config::{Config, ConfigDuration};
use larder_shared::db::{audit, oidc_policies, unix_now};
use larder_shared::oidc::{ClaimPattern, PolicyConfig, TrustPolicy};
use larder_shared::token::CachePattern;

use crate::grants::GrantFlags;

/// `larder-admin oidc …`.
#[derive(Debug, Subcommand)]
pub enum Oidc {
    /// Add a trust policy (stored in the database; in force at once).
    Add(Box<AddPolicy>),
    /// List the trust policies: the config file's, then the database's.
    List,
    /// Remove a stored trust policy (tokens it minted stay valid until
    /// they expire; `revoke-token --sub` stops them sooner).
    Remove {
        /// The policy's name.
        name: String,
    },
}

/// `oidc add NAME --issuer URL --audience AUD --claim CLAIM=PATTERN… --push P…`.
#[derive(Debug, Args)]
pub struct AddPolicy {
    /// Unique name; minted tokens' subjects are `oidc:NAME:<sub>`.
    name: String,
    /// Issuer URL, exactly as the ID token's `iss` (e.g. https://token.actions.githubusercontent.com).
    #[arg(long)]
    issuer: String,
    /// Audience the ID token must name (e.g. this server's URL).
    #[arg(long)]
    audience: String,
    /// A claim matcher, e.g. `repository=snyssen/infra` or `ref=refs/heads/*`;
    /// every claim named must match; repeating a claim allows alternatives.
    #[arg(long = "claim", value_name = "CLAIM=PATTERN", required = true)]
    claims: Vec<String>,
    /// What every token it mints may do, on which caches.
    #[command(flatten)]
    grants: GrantFlags,
    /// Longest life of a minted token, counted from the ID token's issue time.
    #[arg(long, default_value = "1h")]
    max_validity: String,
}

impl AddPolicy {
    fn policy(&self) -> anyhow::Result<PolicyConfig> {
        let mut claims: BTreeMap<String, ClaimPattern> = BTreeMap::new();
        for matcher in &self.claims {
            let Some((claim, pattern)) = matcher.split_once('=') else {
                bail!("--claim {matcher:?}: write CLAIM=PATTERN");
            };
            let pattern = pattern.to_owned();
            let merged = match claims.remove(claim) {
                None => ClaimPattern::One(pattern),
                Some(prev) => {
                    let mut all = prev.patterns().to_vec();
                    all.push(pattern);
                    ClaimPattern::Any(all)
                }
            };
            claims.insert(claim.to_owned(), merged);
        }
        let patterns = |list: &[String]| -> anyhow::Result<Vec<CachePattern>> {
            list.iter()
                .map(|p| CachePattern::new(p).with_context(|| format!("cache pattern {p:?}")))
                .collect()
        };
        let max_validity = humantime::parse_duration(&self.max_validity)
            .with_context(|| format!("--max-validity {:?}", self.max_validity))?;
        Ok(PolicyConfig {
            name: self.name.clone(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            claims,
            pull: patterns(&self.grants.pull)?,
            push: patterns(&self.grants.push)?,
            delete: patterns(&self.grants.delete)?,
            create_cache: patterns(&self.grants.create_cache)?,
            configure_cache: patterns(&self.grants.configure_cache)?,
            configure_cache_retention: patterns(&self.grants.configure_cache_retention)?,
            destroy_cache: patterns(&self.grants.destroy_cache)?,
            max_validity: ConfigDuration::from_secs(max_validity.as_secs()),
        })
    }
}

impl Oidc {
    /// Runs the subcommand.
    pub async fn run(self, config: &Config) -> anyhow::Result<()> {
        let db = crate::open_db(config).await?;
        match self {
            Oidc::Add(add) => {
                let policy = add.policy()?;
                let mut problems = Vec::new();
                policy.problems("policy", &mut problems);
                if !problems.is_empty() {
                    bail!("invalid policy:\n  - {}", problems.join("\n  - "));
                }
                let taken =
                    || anyhow::anyhow!("a trust policy named {:?} already exists", policy.name);
                if config.oidc.policies.iter().any(|p| p.name == policy.name) {
                    return Err(taken());
                }
                // The policy and its audit row together.
                let mut tx = db.begin().await?;
                if !oidc_policies::insert(tx.raw(), &policy.to_policy(), unix_now()).await? {
                    return Err(taken());
                }
                let event = AuditEvent::OidcPolicyAdd {
                    name: policy.name.clone(),
                    policy: serde_json::to_value(&policy)?,
                };
                audit::insert(tx.raw(), unix_now(), &Actor::operator(), &event).await?;
                tx.commit().await?;
                println!("added trust policy {:?}", policy.name);
            }
            Oidc::List => {
                let mut conn = db.conn().await?;
                let stored = oidc_policies::list(conn.raw()).await?;
                let from_file = config.oidc.trust_policies();
                println!(
                    "{:<20}  {:<8}  {:<40}  {:<30}  {:<8}  CLAIMS  GRANTS",
                    "NAME", "SOURCE", "ISSUER", "AUDIENCE", "VALIDITY"
                );
                let rows = from_file
                    .iter()
                    .map(|p| ("config", p))
                    .chain(stored.iter().map(|p| ("database", p)));
                for (source, p) in rows {
                    print_policy(source, p)?;
                }
            }
            Oidc::Remove { name } => {
                if config.oidc.policies.iter().any(|p| p.name == name) {
                    bail!("trust policy {name:?} is defined in the config file; edit it there");
                }
                let mut tx = db.begin().await?;
                if !oidc_policies::delete(tx.raw(), &name).await? {
                    bail!("no stored trust policy named {name:?}");
                }
                let event = AuditEvent::OidcPolicyRemove { name: name.clone() };
                audit::insert(tx.raw(), unix_now(), &Actor::operator(), &event).await?;
                tx.commit().await?;
                println!("removed trust policy {name:?}");
            }
        }
        Ok(())
    }
}

fn print_policy(source: &str, p: &TrustPolicy) -> anyhow::Result<()> {
    println!(
        "{:<20}  {:<8}  {:<40}  {:<30}  {:<8}  {}  {}",
        p.name,
        source,
        p.issuer,
        p.audience,
        humantime::format_duration(p.max_validity).to_string(),
        serde_json::to_string(&p.claims)?,
        serde_json::to_string(&p.caches)?
    );
    Ok(())
}
