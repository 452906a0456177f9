//! `make-token`: mints a token with Attic's flags and claim shape.

use clap::Args;

use larder_shared::audit::Actor;
use larder_shared::config::Config;
use larder_shared::db::tokens::{self, TokenRecord};
use larder_shared::db::{audit, unix_now};
use larder_shared::token::{
    CachePattern, ClaimsBuilder, Permission, TokenKey, mint, parse_validity,
};

/// Flags of `atticadm make-token`.
#[derive(Debug, Args)]
pub struct MakeToken {
    /// Subject (who the token is for; shown in logs).
    #[arg(long)]
    sub: String,
    /// Validity, e.g. `365d`, `2y`, `3 months`.
    #[arg(long)]
    validity: String,
    /// Caches (names or globs) the token may pull from.
    #[arg(long = "pull", value_name = "PATTERN")]
    pull: Vec<String>,
    /// Caches the token may push to.
    #[arg(long = "push", value_name = "PATTERN")]
    push: Vec<String>,
    /// Caches the token may delete paths from.
    #[arg(long = "delete", value_name = "PATTERN")]
    delete: Vec<String>,
    /// Caches the token may create.
    #[arg(long = "create-cache", value_name = "PATTERN")]
    create_cache: Vec<String>,
    /// Caches the token may configure.
    #[arg(long = "configure-cache", value_name = "PATTERN")]
    configure_cache: Vec<String>,
    /// Caches whose retention the token may configure.
    #[arg(long = "configure-cache-retention", value_name = "PATTERN")]
    configure_cache_retention: Vec<String>,
    /// Caches the token may destroy.
    #[arg(long = "destroy-cache", value_name = "PATTERN")]
    destroy_cache: Vec<String>,
    /// Print the claims as JSON instead of a token.
    #[arg(long)]
    dump_claims: bool,
}

impl MakeToken {
    /// Builds the claims in flag order (patterns keep first-seen order),
    /// records the token, and prints it.
    pub async fn run(self, config: &Config) -> anyhow::Result<()> {
        let validity = parse_validity(&self.validity)?;
        let mut builder = ClaimsBuilder::new(self.sub.clone(), validity, unix_now() as u64)
            .issuer(config.jwt.token_bound_issuer.clone())
            .audiences(config.jwt.token_bound_audiences.clone());
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
        for (permission, patterns) in groups {
            for p in patterns {
                builder = builder.grant(CachePattern::new(p)?, permission);
            }
        }
        let claims = builder.build()?;
        if self.dump_claims {
            println!("{}", serde_json::to_string_pretty(&claims)?);
            return Ok(());
        }
        let key = TokenKey::from_config(&config.jwt.signing)?;
        let token = mint(&key, &claims)?;
        let record = TokenRecord::from_claims(&claims)
            .ok_or_else(|| anyhow::anyhow!("minted claims lack a jti"))?;
        let db = crate::open_db(config).await?;
        // The token's record and its audit row (never the token) together.
        let mut tx = db.begin().await?;
        tokens::record(tx.raw(), &record).await?;
        let event = record.mint_event()?;
        audit::insert(tx.raw(), unix_now(), &Actor::operator(), &event).await?;
        tx.commit().await?;
        println!("{token}");
        Ok(())
    }
}
