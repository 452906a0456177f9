//! What `nix path-info --json` says of store paths, as Nix 2.8 and 2.26
//! print it, and the parts of a store path's name.

use anyhow::Context;
use serde::Deserialize;

/// Parses `nix path-info --json` output for `paths`, in their order: a list
/// of objects with `path` (2.8) or an object keyed by path (2.26).
pub(crate) fn parse_path_infos(out: &str, paths: &[String]) -> anyhow::Result<Vec<PathInfo>> {
    let v: serde_json::Value = serde_json::from_str(out)
        .with_context(|| format!("parsing `nix path-info --json`: {out}"))?;
    let mut by_path: std::collections::HashMap<String, PathInfo> = match v {
        serde_json::Value::Array(list) => list
            .into_iter()
            .map(|info| {
                let info: PathInfo = serde_json::from_value(info)?;
                Ok((info.path.clone(), info))
            })
            .collect::<anyhow::Result<_>>()?,
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(path, mut info)| {
                if let Some(fields) = info.as_object_mut() {
                    fields.insert("path".into(), path.clone().into());
                }
                Ok((path, serde_json::from_value(info)?))
            })
            .collect::<anyhow::Result<_>>()?,
        other => anyhow::bail!("`nix path-info --json` printed neither list nor object: {other}"),
    };
    paths
        .iter()
        .map(|p| {
            by_path
                .remove(p)
                .with_context(|| format!("`nix path-info --json` lacks {p}: {out}"))
        })
        .collect()
}

/// `nix path-info --json` output (field names of 2.8 and 2.26).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathInfo {
    /// Absolute store path.
    pub path: String,
    /// `sha256-<base64>` (SRI) on 2.8; `sha256:<nix-base32>` on older Nix.
    pub nar_hash: String,
    /// Uncompressed NAR size.
    pub nar_size: u64,
    /// Absolute paths.
    #[serde(default)]
    pub references: Vec<String>,
    /// Absolute `.drv` path.
    #[serde(default)]
    pub deriver: Option<String>,
    /// `name:base64` signatures.
    #[serde(default)]
    pub signatures: Vec<String>,
    /// Content address, if any.
    #[serde(default)]
    pub ca: Option<String>,
}

impl PathInfo {
    /// `<hash>-<name>`.
    pub fn base_name(&self) -> &str {
        base_name(&self.path)
    }

    /// The 32-character hash part.
    pub fn hash_part(&self) -> &str {
        hash_part(&self.path)
    }
}

/// `/nix/store/<hash>-<name>` → `<hash>-<name>`.
pub fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `/nix/store/<hash>-<name>` → `<hash>`.
pub fn hash_part(path: &str) -> &str {
    let base = base_name(path);
    &base[..base.len().min(32)]
}
