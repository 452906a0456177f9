//! `/_api/v1/caches`: the caches a caller may use, a cache's statistics and
//! its pins (Larder extensions; Attic has no such routes).

use serde::{Deserialize, Serialize};

/// One entry of `GET /_api/v1/caches`, what `larder cache list` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheSummary {
    /// Cache name.
    pub name: String,
    /// Whether anyone may pull.
    pub is_public: bool,
    /// Substituter priority (lower is preferred).
    pub priority: i64,
    /// Permission keys the caller holds on it (`r`, `w`, …).
    pub permissions: Vec<String>,
}

/// `GET /_api/v1/caches/{cache}/stats`: what the cache costs and saves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Store paths in the cache.
    pub objects: i64,
    /// Sum of the NAR sizes of its paths (what clients download uncompressed).
    pub nar_bytes: i64,
    /// Distinct NARs its paths refer to.
    pub nars: i64,
    /// Stored bytes of those NARs (compressed chunks; staged NARs count
    /// uncompressed). Chunks shared with other NARs are counted for each.
    pub stored_bytes: i64,
    /// `nar_bytes / stored_bytes` (1.0 when empty).
    pub dedup_ratio: f64,
    /// Build logs stored (`PUT /{cache}/log/<drv>`); absent from older servers.
    #[serde(default)]
    pub build_logs: i64,
    /// Their stored (zstd-compressed) bytes, not part of `stored_bytes`.
    #[serde(default)]
    pub build_log_bytes: i64,
    /// Realisation documents stored (`realisations/`, `build-trace-v2/`).
    #[serde(default)]
    pub realisations: i64,
}

/// One entry of `GET /_api/v1/caches/{cache}/pins`: a path that, with its
/// closure in the cache, never expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// Pin name, unique in its cache.
    pub name: String,
    /// Absolute store path.
    pub store_path: String,
    /// Its hash part.
    pub store_path_hash: String,
    /// When it was set (Unix seconds).
    pub created_at: i64,
}

/// Body of `PUT /_api/v1/caches/{cache}/pins/{name}`, which sets or moves
/// the pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRequest {
    /// Absolute store path, which must be in the cache.
    pub store_path: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_shape() {
        let s = CacheSummary {
            name: "demo".into(),
            is_public: false,
            priority: 41,
            permissions: vec!["r".into(), "w".into()],
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"name":"demo","is_public":false,"priority":41,"permissions":["r","w"]}"#
        );
        assert_eq!(serde_json::from_str::<CacheSummary>(&json).unwrap(), s);
    }

    #[test]
    fn stats_shape() {
        let s = CacheStats {
            objects: 2,
            nar_bytes: 300,
            nars: 2,
            stored_bytes: 100,
            dedup_ratio: 3.0,
            build_logs: 1,
            build_log_bytes: 40,
            realisations: 0,
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"objects":2,"nar_bytes":300,"nars":2,"stored_bytes":100,"dedup_ratio":3.0,"build_logs":1,"build_log_bytes":40,"realisations":0}"#
        );
    }

    #[test]
    fn pin_shapes() {
        let p = Pin {
            name: "release".into(),
            store_path: "/nix/store/0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm-hello-2.10".into(),
            store_path_hash: "0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm".into(),
            created_at: 7,
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"name":"release","store_path":"/nix/store/0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm-hello-2.10","store_path_hash":"0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm","created_at":7}"#
        );
        assert_eq!(serde_json::from_str::<Pin>(&json).unwrap(), p);
        let req = PinRequest {
            store_path: "/nix/store/x-a".into(),
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"store_path":"/nix/store/x-a"}"#
        );
    }
}
