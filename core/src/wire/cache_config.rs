//! `GET`, `POST`, `PATCH /_api/v1/cache-config/{cache}`: a cache's
//! settings, read by `larder cache info` and written by `create` and
//! `configure`.

use serde::{Deserialize, Serialize};

/// How to set a cache's signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeypairConfig {
    /// The server generates a fresh ed25519 key.
    Generate,
    /// Import `name:base64(64 bytes)`.
    Keypair(String),
}

/// `"Global"` or `{"Period": seconds}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetentionPeriodConfig {
    /// The server's default.
    Global,
    /// Seconds; 0 keeps paths forever.
    Period(u64),
}

/// Attic's `CacheConfig`. Every field is optional, and absent ones are not
/// serialised: a `PATCH` must carry only the fields the user gave.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheConfig {
    /// Write only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keypair: Option<KeypairConfig>,
    /// Read only: the newest active public key, `name:base64`, for Nix's
    /// `trusted-public-keys` (Attic clients read this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Read only (Larder): every active public key, newest first; during a
    /// rotation's overlap hosts should trust all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_keys: Option<Vec<String>>,
    /// Write only (Larder), with `keypair`: retire the previous keys at once
    /// instead of after `[signing] rotation-overlap` (a compromised key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_overlap: Option<bool>,
    /// Whether anyone may pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_public: Option<bool>,
    /// The store directory the cache's paths live in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_dir: Option<String>,
    /// Substituter priority (lower is preferred).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Key names whose signatures mark a path as available upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_cache_key_names: Option<Vec<String>>,
    /// How long unused paths are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_period: Option<RetentionPeriodConfig>,
    /// Read only: the URL Nix substitutes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substituter_endpoint: Option<String>,
    /// Read only: the API base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_endpoint: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_body_carries_only_given_fields() {
        let cfg = CacheConfig {
            priority: Some(30),
            retention_period: Some(RetentionPeriodConfig::Period(3600)),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&cfg).unwrap(),
            r#"{"priority":30,"retention_period":{"Period":3600}}"#
        );
        let cfg = CacheConfig {
            keypair: Some(KeypairConfig::Generate),
            retention_period: Some(RetentionPeriodConfig::Global),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&cfg).unwrap(),
            r#"{"keypair":"Generate","retention_period":"Global"}"#
        );
        let cfg = CacheConfig {
            keypair: Some(KeypairConfig::Keypair("k:AAAA".into())),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&cfg).unwrap(),
            r#"{"keypair":{"Keypair":"k:AAAA"}}"#
        );
    }

    #[test]
    fn attic_bodies_parse() {
        let cfg: CacheConfig = serde_json::from_str(
            r#"{"keypair":"Generate","is_public":true,"store_dir":"/nix/store","priority":41,"upstream_cache_key_names":["cache.nixos.org-1"],"retention_period":{"Period":0}}"#,
        )
        .unwrap();
        assert_eq!(cfg.keypair, Some(KeypairConfig::Generate));
        assert_eq!(cfg.retention_period, Some(RetentionPeriodConfig::Period(0)));
        assert_eq!(cfg.priority, Some(41));
    }
}
