//! The audit trail's vocabulary (docs/operations.md "Audit"): who did what,
//! as typed events, so call sites never spell kinds or detail fields as
//! strings. [`crate::db::audit`] stores them, append-only.
//!
//! An event never carries a token or a secret key: a token is named by its
//! subject and `jti`, a cache key change by the word "keypair".

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use larder_core::CacheName;
use larder_core::nix::hash::NarHash;

/// Who caused an event: a token's subject and id and the client's address
/// for API requests; the operator (`larder-admin:<user>`) or the process
/// (a GC lease holder) otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    /// Token subject, operator or process; `None` for anonymous requests.
    pub subject: Option<String>,
    /// The token's `jti`, when it has one (Attic-minted tokens do not).
    pub jti: Option<String>,
    /// The client's address (after `[http] trusted-proxies`).
    pub client_addr: Option<String>,
}

impl Actor {
    /// The operator running `larder-admin`: `larder-admin:<login>`, from
    /// `$USER` or `$LOGNAME` (plain `larder-admin` when neither is set).
    pub fn operator() -> Self {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.is_empty());
        Self {
            subject: Some(match user {
                Some(u) => format!("larder-admin:{u}"),
                None => "larder-admin".to_owned(),
            }),
            jti: None,
            client_addr: None,
        }
    }

    /// A process acting on its own (a GC run, named by its lease holder).
    pub fn process(name: &str) -> Self {
        Self {
            subject: Some(name.to_owned()),
            jti: None,
            client_addr: None,
        }
    }
}

/// Which route pushed a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PushRoute {
    /// Attic's `PUT /_api/v1/upload-path` (`larder push`, `attic push`).
    UploadPath,
    /// Stock `nix copy`'s narinfo PUT.
    NixCopy,
    /// Larder's chunk-level push commit (`POST /_api/larder/v1/…/nars`).
    ChunkPush,
}

/// What a GC pass deleted, for its one summary row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcSummary {
    /// Paths expired, by cache name.
    pub expired_by_cache: BTreeMap<String, u64>,
    /// Paths expired in total.
    pub objects_expired: u64,
    /// NARs deleted.
    pub nars_deleted: u64,
    /// Chunks deleted.
    pub chunks_deleted: u64,
    /// Stored bytes freed.
    pub bytes_freed: u64,
    /// Objects of dead writers or dead GCs deleted.
    pub orphan_objects_deleted: u64,
}

/// What an `import-attic` run brought into one cache.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    /// Whether the cache was created by the import.
    pub cache_created: bool,
    /// Paths whose NAR was staged for ingest.
    pub paths_staged: u64,
    /// Paths linked to a NAR Larder already had.
    pub paths_linked: u64,
    /// Paths that failed.
    pub paths_failed: u64,
}

/// One auditable change.
#[derive(Debug, Clone, PartialEq)]
pub enum AuditEvent {
    /// A path was pushed (new, or the same NAR again).
    Push {
        /// Cache.
        cache: CacheName,
        /// Absolute store path.
        store_path: String,
        /// Its NAR.
        nar_hash: NarHash,
        /// Uncompressed NAR size.
        nar_size: u64,
        /// Which route.
        route: PushRoute,
    },
    /// A path was pushed with another NAR than the one it had (`X-Larder-Replace`,
    /// or the repair of a broken NAR).
    Replace {
        /// Cache.
        cache: CacheName,
        /// Absolute store path.
        store_path: String,
        /// The new NAR.
        nar_hash: NarHash,
        /// The NAR it had.
        old_nar_hash: NarHash,
        /// Which route.
        route: PushRoute,
    },
    /// A path was deleted from a cache.
    Delete {
        /// Cache.
        cache: CacheName,
        /// Absolute store path.
        store_path: String,
        /// The NAR it had.
        nar_hash: Option<NarHash>,
    },
    /// A cache was created.
    CacheCreate {
        /// Cache.
        cache: CacheName,
        /// Visibility.
        is_public: bool,
        /// Whether the key was generated (else imported).
        generated_key: bool,
    },
    /// A cache was reconfigured; the new values, keypair only as a word.
    CacheConfigure {
        /// Cache.
        cache: CacheName,
        /// The fields sent, as `{"field": new value}`; `"keypair"` maps to
        /// `"Generate"` or `"imported"`, never the key.
        changes: Value,
    },
    /// A cache was destroyed with its paths.
    CacheDestroy {
        /// Cache.
        cache: CacheName,
    },
    /// A pin was set (or moved).
    PinSet {
        /// Cache.
        cache: CacheName,
        /// Pin name.
        pin: String,
        /// The pinned path.
        store_path: String,
    },
    /// A pin was removed.
    PinRemove {
        /// Cache.
        cache: CacheName,
        /// Pin name.
        pin: String,
    },
    /// A token was minted: `larder-admin make-token`, or an OIDC exchange
    /// (actor: the minted subject).
    TokenMint {
        /// The new token's subject.
        token_subject: String,
        /// The new token's id.
        token_jti: String,
        /// Its expiry (Unix seconds).
        expires_at: i64,
        /// Its permissions claim, as JSON.
        permissions: Value,
    },
    /// `larder-admin revoke-token` revoked one token or a subject's tokens.
    TokenRevoke {
        /// The token's id, for a single token.
        token_jti: Option<String>,
        /// The subject, for every token of it.
        token_subject: Option<String>,
        /// Tokens of the subject issued before this (Unix seconds).
        issued_before: Option<i64>,
    },
    /// `larder-admin oidc add` stored a trust policy for CI identity tokens.
    OidcPolicyAdd {
        /// Its name.
        name: String,
        /// Issuer, audience, claims, grants and max-validity, as JSON.
        policy: Value,
    },
    /// `larder-admin oidc remove` removed one.
    OidcPolicyRemove {
        /// Its name.
        name: String,
    },
    /// A build log was stored (or replaced) for a derivation.
    LogPut {
        /// Cache.
        cache: CacheName,
        /// The derivation, `<hash>-<name>.drv`.
        drv: String,
        /// Its size, decoded.
        size: u64,
    },
    /// A realisation (content-addressed derivation output) was stored.
    RealisationPut {
        /// Cache.
        cache: CacheName,
        /// Its key, `<drv hash>!<output>` or `<drv hash>^<output>`.
        key: String,
    },
    /// One GC pass.
    Gc(GcSummary),
    /// One cache of an `import-attic` run.
    ImportAttic {
        /// Cache.
        cache: CacheName,
        /// What came in.
        summary: ImportSummary,
    },
}

impl AuditEvent {
    /// The stored kind; persisted, so a name never changes.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Push { .. } => "push",
            Self::Replace { .. } => "replace",
            Self::Delete { .. } => "delete",
            Self::CacheCreate { .. } => "cache-create",
            Self::CacheConfigure { .. } => "cache-configure",
            Self::CacheDestroy { .. } => "cache-destroy",
            Self::PinSet { .. } => "pin-set",
            Self::PinRemove { .. } => "pin-remove",
            Self::TokenMint { .. } => "token-mint",
            Self::TokenRevoke { .. } => "token-revoke",
            Self::OidcPolicyAdd { .. } => "oidc-policy-add",
            Self::OidcPolicyRemove { .. } => "oidc-policy-remove",
            Self::LogPut { .. } => "log-put",
            Self::RealisationPut { .. } => "realisation-put",
            Self::Gc(_) => "gc",
            Self::ImportAttic { .. } => "import-attic",
        }
    }

    /// The cache the event concerns.
    pub fn cache(&self) -> Option<&CacheName> {
        match self {
            Self::Push { cache, .. }
            | Self::Replace { cache, .. }
            | Self::Delete { cache, .. }
            | Self::CacheCreate { cache, .. }
            | Self::CacheConfigure { cache, .. }
            | Self::CacheDestroy { cache }
            | Self::PinSet { cache, .. }
            | Self::PinRemove { cache, .. }
            | Self::LogPut { cache, .. }
            | Self::RealisationPut { cache, .. }
            | Self::ImportAttic { cache, .. } => Some(cache),
            Self::TokenMint { .. }
            | Self::TokenRevoke { .. }
            | Self::OidcPolicyAdd { .. }
            | Self::OidcPolicyRemove { .. }
            | Self::Gc(_) => None,
        }
    }

    /// The store path the event concerns.
    pub fn store_path(&self) -> Option<&str> {
        match self {
            Self::Push { store_path, .. }
            | Self::Replace { store_path, .. }
            | Self::Delete { store_path, .. }
            | Self::PinSet { store_path, .. } => Some(store_path),
            _ => None,
        }
    }

    /// The NAR the event concerns (the new one for a replacement).
    pub fn nar_hash(&self) -> Option<NarHash> {
        match self {
            Self::Push { nar_hash, .. } | Self::Replace { nar_hash, .. } => Some(*nar_hash),
            Self::Delete { nar_hash, .. } => *nar_hash,
            _ => None,
        }
    }

    /// Everything else, as a JSON object.
    pub fn detail(&self) -> Value {
        match self {
            Self::Push {
                nar_size, route, ..
            } => json!({ "route": route, "nar_size": nar_size }),
            Self::Replace {
                old_nar_hash,
                route,
                ..
            } => json!({ "route": route, "old_nar_hash": old_nar_hash.to_string() }),
            Self::Delete { .. } | Self::CacheDestroy { .. } => json!({}),
            Self::CacheCreate {
                is_public,
                generated_key,
                ..
            } => json!({ "is_public": is_public, "generated_key": generated_key }),
            Self::CacheConfigure { changes, .. } => json!({ "changes": changes }),
            Self::PinSet { pin, .. } | Self::PinRemove { pin, .. } => json!({ "pin": pin }),
            Self::TokenMint {
                token_subject,
                token_jti,
                expires_at,
                permissions,
            } => json!({
                "token_subject": token_subject,
                "token_jti": token_jti,
                "expires_at": expires_at,
                "permissions": permissions,
            }),
            Self::TokenRevoke {
                token_jti,
                token_subject,
                issued_before,
            } => json!({
                "token_jti": token_jti,
                "token_subject": token_subject,
                "issued_before": issued_before,
            }),
            Self::OidcPolicyAdd { name, policy } => json!({ "name": name, "policy": policy }),
            Self::OidcPolicyRemove { name } => json!({ "name": name }),
            Self::LogPut { drv, size, .. } => json!({ "drv": drv, "size": size }),
            Self::RealisationPut { key, .. } => json!({ "key": key }),
            Self::Gc(summary) => json!(summary),
            Self::ImportAttic { summary, .. } => json!(summary),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_distinct_and_details_are_objects() {
        let cache: CacheName = "c".parse().unwrap();
        let hash = NarHash::digest(b"x");
        let events = [
            AuditEvent::Push {
                cache: cache.clone(),
                store_path: "/nix/store/p".into(),
                nar_hash: hash,
                nar_size: 1,
                route: PushRoute::NixCopy,
            },
            AuditEvent::Replace {
                cache: cache.clone(),
                store_path: "/nix/store/p".into(),
                nar_hash: hash,
                old_nar_hash: hash,
                route: PushRoute::UploadPath,
            },
            AuditEvent::Delete {
                cache: cache.clone(),
                store_path: "/nix/store/p".into(),
                nar_hash: None,
            },
            AuditEvent::CacheCreate {
                cache: cache.clone(),
                is_public: true,
                generated_key: true,
            },
            AuditEvent::CacheConfigure {
                cache: cache.clone(),
                changes: json!({}),
            },
            AuditEvent::CacheDestroy {
                cache: cache.clone(),
            },
            AuditEvent::PinSet {
                cache: cache.clone(),
                pin: "p".into(),
                store_path: "/nix/store/p".into(),
            },
            AuditEvent::PinRemove {
                cache: cache.clone(),
                pin: "p".into(),
            },
            AuditEvent::TokenMint {
                token_subject: "s".into(),
                token_jti: "j".into(),
                expires_at: 1,
                permissions: json!({}),
            },
            AuditEvent::TokenRevoke {
                token_jti: Some("j".into()),
                token_subject: None,
                issued_before: None,
            },
            AuditEvent::OidcPolicyAdd {
                name: "p".into(),
                policy: json!({}),
            },
            AuditEvent::OidcPolicyRemove { name: "p".into() },
            AuditEvent::LogPut {
                cache: cache.clone(),
                drv: "x.drv".into(),
                size: 1,
            },
            AuditEvent::RealisationPut {
                cache: cache.clone(),
                key: "k".into(),
            },
            AuditEvent::Gc(GcSummary::default()),
            AuditEvent::ImportAttic {
                cache,
                summary: ImportSummary::default(),
            },
        ];
        let kinds: std::collections::HashSet<_> = events.iter().map(AuditEvent::kind).collect();
        assert_eq!(kinds.len(), events.len());
        for e in &events {
            assert!(e.detail().is_object(), "{}", e.kind());
        }
        assert_eq!(events[0].detail()["route"], json!("nix-copy"));
    }
}
