//! Cache signing keys at rest and their rotation (docs/operations.md "Signing keys";
//! docs/operations.md "Signing keys").
//!
//! A secret key never sits in the database in a usable form: it is sealed
//! with the key-encryption key ([`Kek`], from `[signing]
//! key-encryption-key-file` or `LARDER_SIGNING_KEK`), or the row names a key
//! file on the server. A database dump alone signs nothing.
//!
//! A cache may have several active keys: rotating adds `<cache>-N` and lets
//! the older ones sign on for `[signing] rotation-overlap`, so hosts that
//! trust either key keep pulling ([`rotation`]). Decrypted keys live in the
//! process's [`KeyRing`], keyed by the immutable row id: a narinfo request
//! never decrypts.

pub mod at_rest;
mod kek;
mod ring;
pub mod rotation;

use std::path::PathBuf;

pub use kek::{KEK_ENV, KEK_FILE_KEY, Kek, default_kek_path, is_sealed, read_private};
pub use ring::{ActiveKey, CacheSigning, KeyRing};

use crate::db::DbError;
use larder_core::nix::signing::SigningError;

/// Why a signing key could not be stored, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No KEK configured where one is needed.
    #[error(
        "no key-encryption key for cache signing keys: set {KEK_FILE_KEY} to a file holding \
         32 random bytes (base64 or hex, mode 0600), or put them in ${KEK_ENV}"
    )]
    NoKek,
    /// KEK text that is not base64 or hex of 32 bytes.
    #[error("the key-encryption key must be 32 bytes in base64 or hex (from ${KEK_ENV})")]
    BadKek,
    /// A KEK file that does not hold one.
    #[error("{}: the key-encryption key must be 32 bytes in base64 or hex", .0.display())]
    BadKekFile(PathBuf),
    /// A secret file group or others may read.
    #[error("{}: mode {mode:o} lets other users read this secret; chmod 600 it", path.display())]
    FileMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A secret file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key file that does not hold a Nix secret key of the row's name.
    #[error("{}: not a Nix secret key named {key_name:?}", path.display())]
    BadKeyFile {
        /// The file.
        path: PathBuf,
        /// The name the row expects.
        key_name: String,
    },
    /// A key file that does not hold a Nix secret key at all.
    #[error("{}: not a Nix secret key (`name:base64`, as nix-store --generate-binary-cache-key writes)", .0.display())]
    NotAKeyFile(PathBuf),
    /// Sealing failed (never expected with a valid key).
    #[error("sealing a signing key failed")]
    Seal,
    /// A sealed key did not open: wrong KEK, or the row was altered or moved.
    #[error(
        "cannot decrypt signing key {key_name:?} of cache {cache}: wrong key-encryption key, \
         or the stored key was altered"
    )]
    Open {
        /// The cache.
        cache: String,
        /// The key name.
        key_name: String,
    },
    /// A row with neither a sealed secret nor a key file signs nothing.
    #[error("signing key {key_name:?} of cache {cache} has no secret (retired)")]
    NoSecret {
        /// The cache.
        cache: String,
        /// The key name.
        key_name: String,
    },
    /// A plain key the migration copied does not parse.
    #[error("stored signing key of cache {cache} is not a Nix secret key: {source}")]
    BadPlainKey {
        /// The cache.
        cache: String,
        /// Why.
        source: SigningError,
    },
    /// The cache already has a key of this name.
    #[error("cache already has a signing key named {0:?}; pick another name")]
    NameTaken(String),
    /// A key name that Nix cannot use.
    #[error("invalid key name: {0}")]
    Name(SigningError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}
