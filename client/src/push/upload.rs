//! Uploading one path: by chunk-level push when the server takes it
//! ([`super::chunked`]), else `nix-store --dump` streamed into `PUT
//! /_api/v1/upload-path`, retried on transient failures.
//!
//! The NAR is never held in memory: the dump's stdout is the request body.
//! A retry runs a fresh `nix-store --dump`, since the first stream is spent.
//! A dump that fails is a local problem and is not retried. A server whose
//! staging is full (503 `StagingFull`) is waited for, then tried again.

use std::time::Instant;

use futures::StreamExt as _;

use larder_core::CacheName;
use larder_core::nix::store_path::StoreDir;

use crate::api::ApiClient;
use crate::api::retry::{StagingWait, jitter};
use crate::nix::{Nix, PathInfo};
use larder_core::wire::{UploadKind, UploadPathNarInfo};

use super::chunked;
use super::commit::Chunking;
pub use super::error::UploadError;
use super::progress::PathProgress;
use super::{commit, gate};

/// The upload metadata for `info` (docs/protocol.md wire format): references
/// and deriver as base names, the NAR hash as `sha256:<hex>`.
pub fn nar_info(cache: &CacheName, store_dir: &StoreDir, info: &PathInfo) -> UploadPathNarInfo {
    UploadPathNarInfo {
        cache: cache.to_string(),
        store_path_hash: info.path.hash.to_string(),
        store_path: info.path.to_absolute(store_dir),
        references: info.references.iter().map(|r| r.to_string()).collect(),
        system: None,
        deriver: info.deriver.as_ref().map(|d| d.to_string()),
        sigs: info.signatures.clone(),
        ca: info.ca.clone(),
        nar_hash: format!("sha256:{}", info.nar_hash.to_hex()),
        nar_size: info.nar_size,
    }
}

/// Uploads one path, retrying transient failures with the client's
/// policy, and waiting (bounded, with jitter) while the server's staging
/// is full. Progress hears every byte sent, every retry and every wait.
/// Nothing is committed before `gate` opens (chunks may go out before).
#[allow(clippy::too_many_arguments)]
pub async fn upload(
    api: &ApiClient,
    nix: &Nix,
    cache: &CacheName,
    info: &PathInfo,
    progress: &PathProgress,
    replace: bool,
    chunking: Option<&Chunking>,
    gate: &mut gate::Gate,
) -> Result<UploadKind, UploadError> {
    let patience = StagingWait::default();
    let started = Instant::now();
    loop {
        let result = match chunking {
            Some(params) => {
                let meta = nar_info(cache, nix.store_dir(), info);
                let target = commit::Target {
                    api,
                    cache,
                    replace,
                };
                match chunked::push(target, nix, info, meta, params, progress, gate).await {
                    // A chunk the server dropped meanwhile (expired, or GC took
                    // it): the whole NAR still works.
                    Err(UploadError::Api(e)) if e.kind() == Some("ChunksMissing") => {
                        attempt(api, nix, cache, info, progress, replace).await
                    }
                    other => other,
                }
            }
            None => match gate.wait().await {
                Ok(()) => attempt(api, nix, cache, info, progress, replace).await,
                Err(e) => Err(e),
            },
        };
        match result {
            Err(UploadError::Api(e)) if e.is_staging_full() => {
                let wait = patience.delay(e.retry_after(), jitter());
                if started.elapsed() + wait > patience.limit {
                    return Err(UploadError::StagingFull {
                        waited: started.elapsed(),
                        last: e,
                    });
                }
                progress.waiting(&e, wait);
                tokio::time::sleep(wait).await;
            }
            done => return done,
        }
    }
}

/// One upload with the client's retries of transient failures.
async fn attempt(
    api: &ApiClient,
    nix: &Nix,
    cache: &CacheName,
    info: &PathInfo,
    progress: &PathProgress,
    replace: bool,
) -> Result<UploadKind, UploadError> {
    let meta = nar_info(cache, nix.store_dir(), info);
    api.retry_policy()
        .run(
            |e: &UploadError, wait| progress.retrying(e, wait),
            |_| async {
                progress.restart();
                let (nar, failure) = nix.dump(&info.path)?.into_stream();
                let counter = progress.clone();
                let nar = nar.inspect(move |chunk| {
                    if let Ok(bytes) = chunk {
                        counter.sent(bytes.len() as u64);
                    }
                });
                match api.upload_path(&meta, nar, info.nar_size, replace).await {
                    Ok(result) => Ok(result.kind),
                    Err(e) => Err(match failure.get() {
                        Some(message) => UploadError::Dump(message.to_owned()),
                        None => UploadError::Api(e),
                    }),
                }
            },
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::path_info;

    #[test]
    fn metadata_matches_the_wire_format() {
        let json = r#"[{"path":"/nix/store/cwrdrf70cw4p2fapqgcpjivggac5bsy2-larder-top","narHash":"sha256-Vtw3fMqw3wzq09xUokDez2wt7t5qZOHPznWuUaoXjGg=","narSize":168,"references":["/nix/store/xhbc6lzki4v3dzq6wchbval4q4r5z28n-larder-dep"],"deriver":"/nix/store/pi94zwvcb4gr5aiq6xya2xgwd3fdsa7y-larder-top.drv","signatures":["k-1:sig"]}]"#;
        let store = StoreDir::default();
        let info = path_info::parse(&store, json).unwrap().remove(0);
        let cache: CacheName = "c".parse().unwrap();
        let meta = nar_info(&cache, &store, &info);
        let v = serde_json::to_value(&meta).unwrap();
        assert_eq!(v["cache"], "c");
        assert_eq!(v["store_path_hash"], "cwrdrf70cw4p2fapqgcpjivggac5bsy2");
        assert_eq!(
            v["store_path"],
            "/nix/store/cwrdrf70cw4p2fapqgcpjivggac5bsy2-larder-top"
        );
        assert_eq!(
            v["references"][0],
            "xhbc6lzki4v3dzq6wchbval4q4r5z28n-larder-dep"
        );
        assert_eq!(
            v["deriver"],
            "pi94zwvcb4gr5aiq6xya2xgwd3fdsa7y-larder-top.drv"
        );
        assert_eq!(v["sigs"][0], "k-1:sig");
        assert_eq!(v["nar_size"], 168);
        let hash = v["nar_hash"].as_str().unwrap();
        assert!(
            hash.starts_with("sha256:") && hash.len() == 7 + 64,
            "{hash}"
        );
        assert_eq!(
            hash.parse::<larder_core::nix::hash::NarHash>().unwrap(),
            info.nar_hash
        );
    }
}
