//! `cache-key CACHE (--key-file PATH | --generate) [--no-overlap]`: gives a
//! cache a new signing key from the operator's side, in particular one kept
//! in a file on the server instead of sealed in the database
//! (docs/operations.md "Signing keys").

use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgGroup, Args};

use larder_core::CacheName;
use larder_shared::audit::{Actor, AuditEvent};
use larder_shared::config::Config;
use larder_shared::db::{audit, caches, unix_now};
use larder_shared::signing_keys::Kek;
use larder_shared::signing_keys::rotation::{self, NewKey};

/// `cache-key`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).multiple(false)))]
pub struct CacheKey {
    /// The cache.
    cache: CacheName,
    /// A Nix secret key file (`nix-store --generate-binary-cache-key`
    /// output, mode 0600) that every `larder-api` host can read at this
    /// path; only the path goes into the database.
    #[arg(long, group = "source")]
    key_file: Option<PathBuf>,
    /// A fresh key, sealed with the KEK (as `--regenerate-keypair` does).
    #[arg(long, group = "source")]
    generate: bool,
    /// Retire the previous keys now instead of after `[signing] rotation-overlap`.
    #[arg(long)]
    no_overlap: bool,
}

impl CacheKey {
    /// Adds the key; prints its public key for `trusted-public-keys`.
    pub async fn run(self, config: &Config) -> anyhow::Result<()> {
        let kek = Kek::require(&config.signing)?;
        let db = crate::open_db(config).await?;
        let file = self
            .key_file
            .map(|p| std::fs::canonicalize(&p).with_context(|| format!("key file {}", p.display())))
            .transpose()?;
        let new = match &file {
            Some(path) => NewKey::File(path),
            None => NewKey::Generate,
        };
        let now = unix_now();
        let overlap = config.signing.rotation_overlap.as_secs() as i64;
        let retire_at = if self.no_overlap {
            now
        } else {
            now.saturating_add(overlap)
        };
        let mut tx = db.begin().await?;
        let cache = caches::get_by_name(tx.raw(), &self.cache)
            .await?
            .with_context(|| format!("no cache named {}", self.cache))?;
        let row =
            rotation::add_key(&mut tx, &kek, &self.cache, cache.id, new, retire_at, now).await?;
        // Audited as a configure, like `--regenerate-keypair` (never the key
        // itself; a key file is named by its path).
        let event = AuditEvent::CacheConfigure {
            cache: self.cache.clone(),
            changes: serde_json::json!({
                "keypair": if file.is_some() { "key-file" } else { "Generate" },
                "key_file": file.as_ref().map(|p| p.display().to_string()),
                "key_name": row.key_name,
                "previous_keys_retire_at": retire_at,
            }),
        };
        audit::insert(tx.raw(), now, &Actor::operator(), &event).await?;
        tx.commit().await?;
        db.close().await;
        println!("{}", row.public_key);
        if self.no_overlap {
            eprintln!("the previous keys of {} no longer sign", self.cache);
        } else {
            eprintln!(
                "the previous keys of {} keep signing for {:?}; trust the new key everywhere before then",
                self.cache, config.signing.rotation_overlap
            );
        }
        Ok(())
    }
}
