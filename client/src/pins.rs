//! `larder pin`, `unpin`, `pins` and `delete`: keeping paths from expiring,
//! and removing a path from a cache at once (a secret pushed by mistake).

use std::path::Path;

use larder_core::CacheName;
use larder_core::nix::store_path::StorePath;

use crate::api::{ApiClient, ApiError};
use crate::nix::{Nix, NixError};
pub use larder_core::wire::Pin;

/// Why a pin or delete command failed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The path argument is not a store path.
    #[error(transparent)]
    Nix(#[from] NixError),
    /// The server refused or failed.
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// Resolves `arg` (`/nix/store/…` or a link such as `./result`) to a store path.
/// The path does not need to exist locally when it is given absolutely.
pub fn resolve(arg: &Path) -> Result<(Nix, StorePath), PinError> {
    let nix = Nix::from_env()?;
    let path = match arg
        .to_str()
        .and_then(|s| StorePath::from_absolute_path(nix.store_dir(), s).ok())
    {
        Some(p) => p,
        None => nix.resolve_path(arg)?,
    };
    Ok((nix, path))
}

/// Pins `path` in `cache` under `name`.
pub async fn pin(
    api: &ApiClient,
    cache: &CacheName,
    name: &str,
    arg: &Path,
) -> Result<String, PinError> {
    let (nix, path) = resolve(arg)?;
    let abs = path.to_absolute(nix.store_dir());
    api.set_pin(cache, name, &abs).await?;
    Ok(abs)
}

/// Renders the pin list as a table.
pub fn render(pins: &[Pin]) -> String {
    if pins.is_empty() {
        return "no pins\n".to_owned();
    }
    let width = pins.iter().map(|p| p.name.len()).max().unwrap_or(4).max(4);
    let mut out = format!("{:<width$}  STORE PATH\n", "NAME");
    for p in pins {
        out.push_str(&format!("{:<width$}  {}\n", p.name, p.store_path));
    }
    out
}

/// Deletes `path` from `cache` now.
pub async fn delete(api: &ApiClient, cache: &CacheName, arg: &Path) -> Result<String, PinError> {
    let (nix, path) = resolve(arg)?;
    api.delete_path(cache, &path.hash).await?;
    Ok(path.to_absolute(nix.store_dir()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_absolute_paths_without_touching_the_store() {
        let arg = Path::new("/nix/store/0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm-hello-2.10");
        let (_, p) = resolve(arg).unwrap();
        assert_eq!(p.hash.as_str(), "0c6kzph7l0dcbqmjhyr7wb5ic3pqp1xm");
        assert!(resolve(Path::new("/tmp/definitely-not-a-store-path")).is_err());
    }

    #[test]
    fn renders_pins() {
        assert_eq!(render(&[]), "no pins\n");
        let pins = vec![Pin {
            name: "release".into(),
            store_path: "/nix/store/x-a".into(),
            store_path_hash: "x".into(),
            created_at: 0,
        }];
        assert_eq!(
            render(&pins),
            "NAME     STORE PATH\nrelease  /nix/store/x-a\n"
        );
    }
}
