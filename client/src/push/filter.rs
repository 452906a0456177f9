//! Deciding which paths need uploading: not those the cache's upstream
//! serves, not those the cache already has.
//!
//! The upstream test is by signature only (docs/protocol.md): a path signed by a
//! key whose name is in the cache's `upstream_cache_key_names` (by default
//! `cache.nixos.org-1`) is one Nix can fetch from that upstream, so storing
//! it again would only cost space. No network query is made, so this works
//! offline and cannot be fooled into a slow crawl; a forged signature only
//! makes Larder skip a path, never trust one.

use std::collections::{BTreeSet, HashSet};

use larder_core::CacheName;
use larder_core::nix::store_path::StorePathHash;

use crate::api::{ApiClient, ApiError};
use crate::nix::PathInfo;

/// Key names whose signatures mark a path as available upstream.
#[derive(Debug, Clone, Default)]
pub struct UpstreamFilter {
    names: BTreeSet<String>,
}

impl UpstreamFilter {
    /// A filter for these key names (none: nothing is filtered, as with
    /// `--ignore-upstream-cache-filter`).
    pub fn new(names: impl IntoIterator<Item = String>) -> Self {
        Self {
            names: names.into_iter().collect(),
        }
    }

    /// Whether one of the path's signatures is by an upstream key.
    pub fn is_upstream(&self, info: &PathInfo) -> bool {
        info.signer_names().any(|n| self.names.contains(n))
    }

    /// Splits `infos` into (to consider, served upstream).
    pub fn split(&self, infos: Vec<PathInfo>) -> (Vec<PathInfo>, Vec<PathInfo>) {
        infos.into_iter().partition(|i| !self.is_upstream(i))
    }
}

/// Keeps the paths the cache lacks (asking `get-missing-paths`), and
/// returns how many it already had.
pub async fn drop_present(
    api: &ApiClient,
    cache: &CacheName,
    infos: Vec<PathInfo>,
) -> Result<(Vec<PathInfo>, usize), ApiError> {
    if infos.is_empty() {
        return Ok((infos, 0));
    }
    let hashes: Vec<StorePathHash> = infos.iter().map(|i| i.path.hash.clone()).collect();
    let missing: HashSet<StorePathHash> = api
        .get_missing_paths(cache, &hashes)
        .await?
        .into_iter()
        .collect();
    let total = infos.len();
    let keep: Vec<PathInfo> = infos
        .into_iter()
        .filter(|i| missing.contains(&i.path.hash))
        .collect();
    let present = total - keep.len();
    Ok((keep, present))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::path_info;
    use larder_core::nix::store_path::StoreDir;

    fn info(name_hash: &str, sigs: &[&str]) -> PathInfo {
        let json = format!(
            r#"[{{"path":"/nix/store/{name_hash}","narHash":"sha256-Vtw3fMqw3wzq09xUokDez2wt7t5qZOHPznWuUaoXjGg=","narSize":1,"references":[],"signatures":{}}}]"#,
            serde_json::to_string(sigs).unwrap()
        );
        path_info::parse(&StoreDir::default(), &json)
            .unwrap()
            .remove(0)
    }

    const NIXOS_SIG: &str = "cache.nixos.org-1:lo9EfNIL4eGRuNh7DTbAAffWPpI2SlYC/8uP7JnhgmfRIUNGhSbFe8qEaKN0mFS02TuhPpXFPNtRkFcCp0hGAQ==";
    const OWN_SIG: &str = "my-laptop-1:lo9EfNIL4eGRuNh7DTbAAffWPpI2SlYC/8uP7JnhgmfRIUNGhSbFe8qEaKN0mFS02TuhPpXFPNtRkFcCp0hGAQ==";

    #[test]
    fn drops_paths_signed_by_an_upstream_key() {
        let filter = UpstreamFilter::new(["cache.nixos.org-1".to_owned()]);
        let upstream = info(
            "xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10",
            &[OWN_SIG, NIXOS_SIG],
        );
        let local = info("563528481rvhc5kxwipjmg6rqrl95mdx-mine", &[OWN_SIG]);
        let unsigned = info("cwrdrf70cw4p2fapqgcpjivggac5bsy2-larder-top", &[]);
        assert!(filter.is_upstream(&upstream));
        assert!(!filter.is_upstream(&local));
        assert!(!filter.is_upstream(&unsigned));
        let (keep, skipped) = filter.split(vec![upstream, local, unsigned]);
        assert_eq!(keep.len(), 2);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].path.name.as_str(), "hello-2.10");
    }

    #[test]
    fn empty_filter_keeps_everything() {
        let filter = UpstreamFilter::new(Vec::new());
        let upstream = info("xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10", &[NIXOS_SIG]);
        assert!(!filter.is_upstream(&upstream));
    }

    #[test]
    fn key_names_match_exactly() {
        let filter = UpstreamFilter::new(["cache.nixos.org".to_owned()]);
        let upstream = info("xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10", &[NIXOS_SIG]);
        assert!(!filter.is_upstream(&upstream));
    }
}
