//! Parsing `nix path-info --json`, in both shapes Nix has printed:
//!
//! - Nix 2.8 to 2.18: a JSON array of objects, each with `path`, `narHash`,
//!   `narSize`, `references` (absolute paths), `deriver`, `signatures`,
//!   `ca`; an unknown path is `{"path": …, "valid": false}`.
//! - Nix 2.19 and later: an object keyed by path, whose values lack `path`;
//!   an unknown path maps to `null`.
//!
//! Paths may be absolute or, in the newest releases, bare base names; both
//! are accepted. `narHash` may be SRI (`sha256-…`) or `sha256:<base32>`.
//! Only fields Larder uploads are kept; the rest (`registrationTime`,
//! `ultimate`, …) are ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

use larder_core::nix::hash::NarHash;
use larder_core::nix::store_path::{StoreDir, StorePath, StorePathError};

/// Metadata of one valid store path, as Nix reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The path.
    pub path: StorePath,
    /// SHA-256 of its NAR serialisation.
    pub nar_hash: NarHash,
    /// Length of its NAR serialisation.
    pub nar_size: u64,
    /// Paths it refers to (possibly itself).
    pub references: Vec<StorePath>,
    /// The derivation that built it, if known.
    pub deriver: Option<StorePath>,
    /// Signatures `keyname:base64`, as Nix has them.
    pub signatures: Vec<String>,
    /// Content address, e.g. `fixed:r:sha256:…`, for CA paths.
    pub ca: Option<String>,
}

impl PathInfo {
    /// Names of the keys that signed the path (`cache.nixos.org-1`, …).
    pub fn signer_names(&self) -> impl Iterator<Item = &str> {
        self.signatures
            .iter()
            .filter_map(|s| s.split_once(':').map(|(name, _)| name))
    }
}

/// Why `nix path-info --json` output could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PathInfoError {
    /// Not JSON, or not of either shape.
    #[error("unexpected `nix path-info --json` output: {0}")]
    Json(#[from] serde_json::Error),
    /// Neither an array nor an object at the top level.
    #[error("unexpected `nix path-info --json` output: neither an array nor an object")]
    Shape,
    /// Nix says the path is not in the local store.
    #[error("{0} is not a valid path in the local Nix store")]
    NotValid(String),
    /// A required field is absent.
    #[error("`nix path-info` gave no {field} for {path}")]
    MissingField {
        /// The path concerned.
        path: String,
        /// The field's JSON name.
        field: &'static str,
    },
    /// A path that is not a store path of this store.
    #[error("`nix path-info` printed an invalid store path {path:?}: {source}")]
    BadPath {
        /// The text.
        path: String,
        /// Why.
        source: StorePathError,
    },
    /// A hash that does not parse.
    #[error("`nix path-info` printed an invalid narHash {hash:?} for {path}")]
    BadHash {
        /// The path concerned.
        path: String,
        /// The text.
        hash: String,
    },
}

/// One entry, in either shape (`path` and `valid` only in the old one).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawInfo {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    valid: Option<bool>,
    #[serde(default)]
    nar_hash: Option<String>,
    #[serde(default)]
    nar_size: Option<u64>,
    #[serde(default)]
    references: Vec<String>,
    #[serde(default)]
    deriver: Option<String>,
    #[serde(default)]
    signatures: Option<Vec<String>>,
    /// A string up to Nix 2.18; newer releases may print a structure,
    /// which is ignored (the server does not need it).
    #[serde(default)]
    ca: Option<serde_json::Value>,
}

/// Parses the output of `nix path-info --json`. An unknown path is an
/// error: everything asked about came from the local store a moment ago.
pub fn parse(store_dir: &StoreDir, json: &str) -> Result<Vec<PathInfo>, PathInfoError> {
    let value: serde_json::Value = serde_json::from_str(json)?;
    let entries: Vec<(String, Option<RawInfo>)> = match value {
        serde_json::Value::Array(_) => {
            let list: Vec<RawInfo> = serde_json::from_value(value)?;
            list.into_iter()
                .map(|raw| (raw.path.clone().unwrap_or_default(), Some(raw)))
                .collect()
        }
        serde_json::Value::Object(_) => {
            let map: BTreeMap<String, Option<RawInfo>> = serde_json::from_value(value)?;
            map.into_iter().collect()
        }
        _ => return Err(PathInfoError::Shape),
    };
    entries
        .into_iter()
        .map(|(path, raw)| convert(store_dir, path, raw))
        .collect()
}

fn convert(
    store_dir: &StoreDir,
    path_text: String,
    raw: Option<RawInfo>,
) -> Result<PathInfo, PathInfoError> {
    if path_text.is_empty() {
        return Err(PathInfoError::MissingField {
            path: "an entry".into(),
            field: "path",
        });
    }
    let Some(raw) = raw.filter(|r| r.valid != Some(false)) else {
        return Err(PathInfoError::NotValid(path_text));
    };
    let path = parse_path(store_dir, &path_text)?;
    let missing = |field| PathInfoError::MissingField {
        path: path_text.clone(),
        field,
    };
    let hash_text = raw.nar_hash.ok_or_else(|| missing("narHash"))?;
    let nar_hash = hash_text.parse().map_err(|_| PathInfoError::BadHash {
        path: path_text.clone(),
        hash: hash_text.clone(),
    })?;
    let nar_size = raw.nar_size.ok_or_else(|| missing("narSize"))?;
    let references = raw
        .references
        .iter()
        .map(|r| parse_path(store_dir, r))
        .collect::<Result<_, _>>()?;
    let deriver = raw
        .deriver
        .as_deref()
        .filter(|d| !d.is_empty())
        .map(|d| parse_path(store_dir, d))
        .transpose()?;
    let ca = match raw.ca {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    };
    Ok(PathInfo {
        path,
        nar_hash,
        nar_size,
        references,
        deriver,
        signatures: raw.signatures.unwrap_or_default(),
        ca,
    })
}

/// An absolute path in `store_dir`, or a bare base name.
pub fn parse_path(store_dir: &StoreDir, text: &str) -> Result<StorePath, PathInfoError> {
    let parsed = if text.starts_with('/') {
        StorePath::from_absolute_path(store_dir, text)
    } else {
        StorePath::from_base_name(text)
    };
    parsed.map_err(|source| PathInfoError::BadPath {
        path: text.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP: &str = "/nix/store/cwrdrf70cw4p2fapqgcpjivggac5bsy2-larder-top";
    const DEP: &str = "/nix/store/xhbc6lzki4v3dzq6wchbval4q4r5z28n-larder-dep";

    /// Verbatim from Nix 2.8 on this machine.
    const NIX_2_8: &str = r#"[{"path":"/nix/store/cwrdrf70cw4p2fapqgcpjivggac5bsy2-larder-top","narHash":"sha256-Vtw3fMqw3wzq09xUokDez2wt7t5qZOHPznWuUaoXjGg=","narSize":168,"references":["/nix/store/xhbc6lzki4v3dzq6wchbval4q4r5z28n-larder-dep"],"deriver":"/nix/store/pi94zwvcb4gr5aiq6xya2xgwd3fdsa7y-larder-top.drv","registrationTime":1795616685,"ultimate":true},{"path":"/nix/store/xhbc6lzki4v3dzq6wchbval4q4r5z28n-larder-dep","narHash":"sha256-e9vJ5kB9nT7UCtxk10a+Y2a19Y7maMawKGYAi771cgI=","narSize":120,"references":[],"deriver":"/nix/store/lvdbhnr3dwpivsh4xds6y6ighphbm71i-larder-dep.drv","registrationTime":1795616685,"ultimate":true}]"#;

    /// The shape of Nix 2.19+: keyed by path, `ca` null, signatures present.
    const NIX_NEW: &str = r#"{
      "/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10": {
        "ca": null,
        "deriver": "/nix/store/0000000000000000000000000000000a-hello-2.10.drv",
        "narHash": "sha256:16mvl7v0ylzcg2n3xzjn41qhzbmgcn5iyarx16nn5l2r36n2kqci",
        "narSize": 206104,
        "references": [
          "/nix/store/563528481rvhc5kxwipjmg6rqrl95mdx-glibc-2.33-56",
          "/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10"
        ],
        "registrationTime": 1700000000,
        "signatures": ["cache.nixos.org-1:lo9EfNIL4eGRuNh7DTbAAffWPpI2SlYC/8uP7JnhgmfRIUNGhSbFe8qEaKN0mFS02TuhPpXFPNtRkFcCp0hGAQ=="],
        "ultimate": false
      }
    }"#;

    fn store() -> StoreDir {
        StoreDir::default()
    }

    #[test]
    fn parses_nix_2_8_array() {
        let infos = parse(&store(), NIX_2_8).unwrap();
        assert_eq!(infos.len(), 2);
        let top = &infos[0];
        assert_eq!(top.path.to_absolute(&store()), TOP);
        assert_eq!(top.nar_size, 168);
        assert_eq!(
            top.nar_hash.to_sri(),
            "sha256-Vtw3fMqw3wzq09xUokDez2wt7t5qZOHPznWuUaoXjGg="
        );
        assert_eq!(top.references.len(), 1);
        assert_eq!(top.references[0].to_absolute(&store()), DEP);
        assert_eq!(
            top.deriver.as_ref().unwrap().to_string(),
            "pi94zwvcb4gr5aiq6xya2xgwd3fdsa7y-larder-top.drv"
        );
        assert!(top.signatures.is_empty());
        assert_eq!(top.ca, None);
        assert!(infos[1].references.is_empty());
    }

    #[test]
    fn parses_new_object_shape() {
        let infos = parse(&store(), NIX_NEW).unwrap();
        assert_eq!(infos.len(), 1);
        let hello = &infos[0];
        assert_eq!(
            hello.path.to_string(),
            "xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10"
        );
        assert_eq!(hello.nar_size, 206104);
        assert_eq!(
            hello.nar_hash.to_string(),
            "sha256:16mvl7v0ylzcg2n3xzjn41qhzbmgcn5iyarx16nn5l2r36n2kqci"
        );
        assert_eq!(hello.references.len(), 2);
        assert_eq!(
            hello.signer_names().collect::<Vec<_>>(),
            ["cache.nixos.org-1"]
        );
        assert_eq!(hello.ca, None);
    }

    #[test]
    fn accepts_base_names_and_ca_strings() {
        let json = r#"{"xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10": {
            "narHash": "sha256-Vtw3fMqw3wzq09xUokDez2wt7t5qZOHPznWuUaoXjGg=", "narSize": 1,
            "references": ["563528481rvhc5kxwipjmg6rqrl95mdx-glibc-2.33-56"],
            "deriver": null, "ca": "fixed:r:sha256:1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0"}}"#;
        let infos = parse(&store(), json).unwrap();
        assert_eq!(infos[0].references[0].name.as_str(), "glibc-2.33-56");
        assert_eq!(infos[0].deriver, None);
        assert!(infos[0].ca.as_deref().unwrap().starts_with("fixed:r:"));
    }

    #[test]
    fn invalid_paths_are_errors_in_both_shapes() {
        let old = r#"[{"path":"/nix/store/00000000000000000000000000000000-x","valid":false}]"#;
        assert!(matches!(
            parse(&store(), old),
            Err(PathInfoError::NotValid(p)) if p.ends_with("-x")
        ));
        let new = r#"{"/nix/store/00000000000000000000000000000000-x": null}"#;
        assert!(matches!(
            parse(&store(), new),
            Err(PathInfoError::NotValid(_))
        ));
    }

    #[test]
    fn rejects_paths_outside_the_store_and_bad_hashes() {
        let outside = r#"[{"path":"/tmp/00000000000000000000000000000000-x","narHash":"sha256-Vtw3fMqw3wzq09xUokDez2wt7t5qZOHPznWuUaoXjGg=","narSize":1,"references":[]}]"#;
        assert!(matches!(
            parse(&store(), outside),
            Err(PathInfoError::BadPath { .. })
        ));
        let bad_hash = r#"[{"path":"/nix/store/00000000000000000000000000000000-x","narHash":"md5:abc","narSize":1,"references":[]}]"#;
        assert!(matches!(
            parse(&store(), bad_hash),
            Err(PathInfoError::BadHash { .. })
        ));
        let no_size = r#"[{"path":"/nix/store/00000000000000000000000000000000-x","narHash":"sha256-Vtw3fMqw3wzq09xUokDez2wt7t5qZOHPznWuUaoXjGg=","references":[]}]"#;
        assert!(matches!(
            parse(&store(), no_size),
            Err(PathInfoError::MissingField {
                field: "narSize",
                ..
            })
        ));
        assert!(matches!(parse(&store(), "42"), Err(PathInfoError::Shape)));
        assert!(matches!(
            parse(&store(), "nope"),
            Err(PathInfoError::Json(_))
        ));
    }
}
