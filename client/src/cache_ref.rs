//! `[SERVER:]CACHE`, the way every command names a cache.
//!
//! Cache names cannot contain `:` (docs/protocol.md), so the first `:` separates
//! the server from the cache; without one, the default server is meant.

use std::fmt;
use std::str::FromStr;

use larder_core::CacheName;
use larder_core::cache_name::CacheNameError;

/// A cache on an optionally named server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRef {
    /// The server's name in the configuration; `None` for the default.
    pub server: Option<String>,
    /// The cache.
    pub cache: CacheName,
}

/// Why a `[SERVER:]CACHE` argument is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CacheRefError {
    /// `:CACHE`: a colon with nothing before it.
    #[error("empty server name before `:`")]
    EmptyServer,
    /// The cache part is not a valid cache name.
    #[error("invalid cache name {name:?}: {source}")]
    Cache {
        /// The cache part.
        name: String,
        /// Why it is invalid.
        source: CacheNameError,
    },
}

impl FromStr for CacheRef {
    type Err = CacheRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (server, cache) = match s.split_once(':') {
            Some(("", _)) => return Err(CacheRefError::EmptyServer),
            Some((server, cache)) => (Some(server.to_owned()), cache),
            None => (None, s),
        };
        let cache = cache.parse().map_err(|source| CacheRefError::Cache {
            name: cache.to_owned(),
            source,
        })?;
        Ok(Self { server, cache })
    }
}

impl fmt::Display for CacheRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.server {
            Some(server) => write!(f, "{server}:{}", self.cache),
            None => write!(f, "{}", self.cache),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_alone_uses_the_default_server() {
        let r: CacheRef = "my-cache".parse().unwrap();
        assert_eq!(r.server, None);
        assert_eq!(r.cache.as_str(), "my-cache");
        assert_eq!(r.to_string(), "my-cache");
    }

    #[test]
    fn server_prefix() {
        let r: CacheRef = "prod:team_ci+x".parse().unwrap();
        assert_eq!(r.server.as_deref(), Some("prod"));
        assert_eq!(r.cache.as_str(), "team_ci+x");
        assert_eq!(r.to_string(), "prod:team_ci+x");
    }

    #[test]
    fn rejects_bad_refs() {
        assert_eq!(
            ":cache".parse::<CacheRef>(),
            Err(CacheRefError::EmptyServer)
        );
        assert!(matches!(
            "srv:".parse::<CacheRef>(),
            Err(CacheRefError::Cache { .. })
        ));
        // A second colon ends up in the cache name, which forbids it.
        assert!(matches!(
            "a:b:c".parse::<CacheRef>(),
            Err(CacheRefError::Cache { .. })
        ));
        assert!(matches!(
            "-bad".parse::<CacheRef>(),
            Err(CacheRefError::Cache { .. })
        ));
    }
}
