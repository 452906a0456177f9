//! Which paths a push covers, and in what order they go up.
//!
//! The closure comes from `nix-store -qR`, the metadata from `nix path-info
//! --json`. Uploads are ordered references first: the server does not
//! require it, but a path whose references are already in the cache is
//! usable by Nix the moment it lands, so an interrupted push leaves a
//! cache of complete closures rather than dangling ones.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use larder_core::nix::store_path::StorePath;

use crate::nix::{Nix, NixError, PathInfo};

/// The paths to consider for `roots`: their closures, or just themselves
/// with `--no-closure`, minus those in `seen` (already handled earlier in
/// this run), each with its metadata. Adds them to `seen`.
pub async fn collect(
    nix: &Nix,
    roots: &[StorePath],
    with_closure: bool,
    seen: &mut HashSet<StorePath>,
) -> Result<Vec<PathInfo>, NixError> {
    let roots: Vec<StorePath> = roots
        .iter()
        .filter(|p| !seen.contains(*p))
        .cloned()
        .collect();
    if roots.is_empty() {
        return Ok(Vec::new());
    }
    let paths = if with_closure {
        nix.closure(&roots).await?
    } else {
        let mut unique = BTreeSet::new();
        roots
            .into_iter()
            .filter(|p| unique.insert(p.clone()))
            .collect()
    };
    let fresh: Vec<StorePath> = paths.into_iter().filter(|p| !seen.contains(p)).collect();
    if fresh.is_empty() {
        return Ok(Vec::new());
    }
    let infos = nix.path_info(&fresh).await?;
    seen.extend(fresh);
    Ok(infos)
}

/// Orders `infos` so that each path comes after the paths it refers to
/// (among those given; self-references and outside paths are ignored).
/// Ties are broken by store path, so the order is deterministic.
pub fn references_first(infos: Vec<PathInfo>) -> Vec<PathInfo> {
    let mut by_path: BTreeMap<StorePath, PathInfo> =
        infos.into_iter().map(|i| (i.path.clone(), i)).collect();
    // For each path: how many of its references are still waiting, and
    // which paths wait for it.
    let mut pending: BTreeMap<StorePath, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<StorePath, Vec<StorePath>> = BTreeMap::new();
    for (path, info) in &by_path {
        let refs: BTreeSet<&StorePath> = info
            .references
            .iter()
            .filter(|r| *r != path && by_path.contains_key(*r))
            .collect();
        pending.insert(path.clone(), refs.len());
        for r in refs {
            dependents.entry(r.clone()).or_default().push(path.clone());
        }
    }
    let mut ready: BTreeSet<StorePath> = pending
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(p, _)| p.clone())
        .collect();
    let mut out = Vec::with_capacity(by_path.len());
    while let Some(path) = ready.pop_first() {
        for d in dependents.remove(&path).unwrap_or_default() {
            if let Some(n) = pending.get_mut(&d) {
                *n -= 1;
                if *n == 0 {
                    ready.insert(d);
                }
            }
        }
        if let Some(info) = by_path.remove(&path) {
            out.push(info);
        }
    }
    // A reference cycle cannot come out of Nix; should one appear anyway,
    // its paths still go up, after the rest.
    out.extend(by_path.into_values());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::path_info;
    use larder_core::nix::store_path::StoreDir;

    /// A path named `name` (hash derived from the name) referring to `refs`.
    fn info(name: &str, refs: &[&str]) -> PathInfo {
        let path = |n: &str| {
            let hash: String = n
                .chars()
                .cycle()
                .filter(|c| c.is_ascii_lowercase() && !"eotu".contains(*c))
                .take(32)
                .collect();
            format!("/nix/store/{hash}-{n}")
        };
        let json = serde_json::json!([{
            "path": path(name),
            "narHash": "sha256-Vtw3fMqw3wzq09xUokDez2wt7t5qZOHPznWuUaoXjGg=",
            "narSize": 1,
            "references": refs.iter().map(|r| path(r)).collect::<Vec<_>>(),
        }]);
        path_info::parse(&StoreDir::default(), &json.to_string())
            .unwrap()
            .remove(0)
    }

    fn names(infos: &[PathInfo]) -> Vec<&str> {
        infos.iter().map(|i| i.path.name.as_str()).collect()
    }

    #[test]
    fn references_come_first() {
        let order = references_first(vec![
            info("app", &["app", "lib", "glibc"]),
            info("lib", &["glibc"]),
            info("glibc", &["glibc"]),
            info("docs", &[]),
        ]);
        let names = names(&order);
        let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("glibc") < pos("lib"));
        assert!(pos("lib") < pos("app"));
        assert_eq!(names.len(), 4);
    }

    #[test]
    fn references_outside_the_set_are_ignored() {
        let order = references_first(vec![info("app", &["not-pushed"]), info("lib", &[])]);
        assert_eq!(order.len(), 2);
    }

    #[test]
    fn deterministic() {
        let a = references_first(vec![info("b", &[]), info("a", &[]), info("c", &["a"])]);
        let b = references_first(vec![info("c", &["a"]), info("a", &[]), info("b", &[])]);
        assert_eq!(names(&a), names(&b));
    }
}
