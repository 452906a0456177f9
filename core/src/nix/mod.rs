//! Nix formats, written from their specifications (nix-compat is not
//! published in usable form): nix-base32, hashes, content addresses, store
//! paths, NAR, narinfo, signing.

pub mod base32;
pub mod compression;
pub mod content_address;
pub mod hash;
pub mod nar;
pub mod narinfo;
pub mod signing;
pub mod store_path;
