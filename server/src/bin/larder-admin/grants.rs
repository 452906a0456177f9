//! The cache-permission flags of `make-token` and `oidc add`: Attic's
//! `atticadm make-token` flags, one list of cache patterns per permission.

use clap::Args;

use larder_shared::token::Permission;

/// `--pull P… --push P… …`: what a token (or every token a trust policy
/// mints) may do, on which caches.
#[derive(Debug, Args)]
pub struct GrantFlags {
    /// Caches (names or globs) the token may pull from.
    #[arg(long = "pull", value_name = "PATTERN")]
    pub pull: Vec<String>,
    /// Caches the token may push to.
    #[arg(long = "push", value_name = "PATTERN")]
    pub push: Vec<String>,
    /// Caches the token may delete paths from.
    #[arg(long = "delete", value_name = "PATTERN")]
    pub delete: Vec<String>,
    /// Caches the token may create.
    #[arg(long = "create-cache", value_name = "PATTERN")]
    pub create_cache: Vec<String>,
    /// Caches the token may configure.
    #[arg(long = "configure-cache", value_name = "PATTERN")]
    pub configure_cache: Vec<String>,
    /// Caches whose retention the token may configure.
    #[arg(long = "configure-cache-retention", value_name = "PATTERN")]
    pub configure_cache_retention: Vec<String>,
    /// Caches the token may destroy.
    #[arg(long = "destroy-cache", value_name = "PATTERN")]
    pub destroy_cache: Vec<String>,
}

impl GrantFlags {
    /// Each permission with its patterns, in the claim order `make-token`
    /// has always used (every pull pattern, then push, …).
    pub fn groups(&self) -> [(Permission, &[String]); 7] {
        [
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
        ]
    }
}
