//! NAR file names in URLs: the ones stock Nix writes when it uploads
//! (`nar/<filehash>.nar.xz`) and Larder's own (`nar/<narhash>.nar.zst`).

use larder_core::nix::hash::{FileHash, NarHash};
use larder_core::nix::narinfo::Compression;

/// The file hash in a NAR file name as Nix 2.8 writes it:
/// `<filehash>.nar` (none, gzip) or `<filehash>.nar.<xz|zst|bz2|br|lz4|lzip>`.
pub fn parse_file_name(file: &str) -> Option<FileHash> {
    let (hash, ext) = file.split_once('.')?;
    let known = matches!(
        ext,
        "nar" | "nar.xz" | "nar.zst" | "nar.bz2" | "nar.br" | "nar.lz4" | "nar.lzip"
    );
    if !known {
        return None;
    }
    FileHash::from_base32_bare(hash).ok()
}

/// Larder's own NAR URLs: `<narhash>.nar` and `<narhash>.nar.zst`.
pub(crate) fn own_url(file: &str) -> Option<(NarHash, Compression)> {
    let (hash, compression) = if let Some(h) = file.strip_suffix(".nar.zst") {
        (h, Compression::Zstd)
    } else {
        (file.strip_suffix(".nar")?, Compression::None)
    };
    Some((NarHash::from_base32_bare(hash).ok()?, compression))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_as_nix_writes_them() {
        let h = FileHash::digest(b"x");
        let b = h.to_base32();
        for ext in ["", ".xz", ".zst", ".bz2", ".br", ".lz4", ".lzip"] {
            assert_eq!(parse_file_name(&format!("{b}.nar{ext}")), Some(h), "{ext}");
        }
        for bad in [
            format!("{b}.nar.gz"),
            format!("{b}.narinfo"),
            b.to_string(),
            "x.nar".into(),
        ] {
            assert_eq!(parse_file_name(&bad), None, "{bad}");
        }
    }

    #[test]
    fn own_urls() {
        let h = NarHash::digest(b"x");
        let b = h.to_base32();
        assert_eq!(own_url(&format!("{b}.nar")), Some((h, Compression::None)));
        assert_eq!(
            own_url(&format!("{b}.nar.zst")),
            Some((h, Compression::Zstd))
        );
        assert_eq!(own_url(&format!("{b}.nar.xz")), None);
    }
}
