//! What an uploader says about a path, checked the same way by both upload
//! routes (Attic's `upload-path` and the narinfo PUT of `nix copy`): Nix
//! refuses a whole substitution over metadata it cannot parse, and Larder
//! signs what it serves, so anything Nix would refuse is refused here, at
//! upload, with a 400 (docs/operations.md "What uploads must look like").

use larder_core::nix::content_address::ContentAddress;
use larder_core::nix::signing::Signature;
use larder_core::nix::store_path::StoreDir;
use larder_shared::db::caches::CacheRecord;

use crate::error::{ApiError, ApiResult};

/// A path must live in the cache's store directory: Larder serves and signs
/// it as a path of that store.
pub fn check_store_dir(cache: &CacheRecord, dir: &StoreDir) -> ApiResult<()> {
    let cache_dir = &cache.store_dir;
    if dir != cache_dir {
        return Err(ApiError::BadRequest(format!(
            "store path is in {dir}, but this cache's store is {cache_dir}"
        )));
    }
    Ok(())
}

/// Parses a content address as Nix does and returns Nix's canonical
/// spelling, which is what gets stored and served. Empty means none (as in
/// a narinfo).
pub fn content_address(ca: Option<&str>) -> ApiResult<Option<String>> {
    match ca.filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(text) => text
            .parse::<ContentAddress>()
            .map(|ca| Some(ca.to_string()))
            .map_err(|e| ApiError::BadRequest(format!("invalid content address {text:?}: {e}"))),
    }
}

/// Each signature must be `name:base64` of a 64-byte ed25519 signature with
/// a non-empty key name free of whitespace. Whether it verifies is the
/// client's business; whether it parses is ours, since one malformed `Sig`
/// fails the client's whole substitution.
pub fn check_signatures(sigs: &[String]) -> ApiResult<()> {
    for sig in sigs {
        sig.parse::<Signature>()
            .map_err(|e| ApiError::BadRequest(format!("invalid signature {sig:?}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "cache.nixos.org-1:lo9EfNIL4eGRuNh7DTbAAffWPpI2SlYC/8uP7JnhgmfRIUNGhSbFe8qEaKN0mFS02TuhPpXFPNtRkFcCp0hGAQ==";

    #[test]
    fn signatures() {
        assert!(check_signatures(&[SIG.into()]).is_ok());
        for bad in [
            "cache.nixos.org-1:!!!not-base64!!!",
            "",
            "no-colon",
            ":lo9EfNIL4eGRuNh7DTbAAffWPpI2SlYC/8uP7JnhgmfRIUNGhSbFe8qEaKN0mFS02TuhPpXFPNtRkFcCp0hGAQ==",
            "key one:lo9EfNIL4eGRuNh7DTbAAffWPpI2SlYC/8uP7JnhgmfRIUNGhSbFe8qEaKN0mFS02TuhPpXFPNtRkFcCp0hGAQ==",
            // 32 bytes: a public key, not a signature.
            "k:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
        ] {
            let err = check_signatures(&[SIG.into(), bad.into()]).unwrap_err();
            assert!(matches!(err, ApiError::BadRequest(_)), "{bad:?}");
        }
    }

    #[test]
    fn content_addresses() {
        assert_eq!(content_address(None).unwrap(), None);
        assert_eq!(content_address(Some("")).unwrap(), None);
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(
            content_address(Some(&format!("fixed:r:sha256:{hex}"))).unwrap(),
            Some("fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s".into())
        );
        assert!(matches!(
            content_address(Some("definitely not a CA")),
            Err(ApiError::BadRequest(_))
        ));
    }
}
