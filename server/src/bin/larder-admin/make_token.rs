//! `make-token`: mints a token with Attic's flags and claim shape.

use clap::Args;

use larder_shared::audit::Actor;
use larder_shared::config::Config;
use larder_shared::db::tokens::{self, TokenRecord};
use larder_shared::db::{audit, unix_now};
use larder_shared::token::{CachePattern, ClaimsBuilder, TokenKey, mint, parse_validity};

use crate::grants::GrantFlags;

/// Flags of `atticadm make-token`.
#[derive(Debug, Args)]
pub struct MakeToken {
    /// Subject (who the token is for; shown in logs).
    #[arg(long)]
    sub: String,
    /// Validity, e.g. `365d`, `2y`, `3 months`.
    #[arg(long)]
    validity: String,
    /// What the token may do, on which caches.
    #[command(flatten)]
    grants: GrantFlags,
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
        for (permission, patterns) in self.grants.groups() {
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
