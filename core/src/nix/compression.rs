//! The compression a binary cache names for a file (`Compression:` in a
//! narinfo, the extension Nix gives an uploaded NAR).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// How the file at `URL` is compressed (`Compression:`), with Nix's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// `none`.
    None,
    /// `xz`, Nix's default for uploads.
    Xz,
    /// `bzip2`, what a narinfo without `Compression` means.
    Bzip2,
    /// `zstd`, what Larder stores.
    Zstd,
    /// `gzip`.
    Gzip,
    /// `br`.
    Brotli,
    /// `lz4`.
    Lz4,
    /// `lzip`.
    Lzip,
}

impl Compression {
    /// Every variant, for exhaustive tests and CLI help.
    pub const ALL: [Self; 8] = [
        Self::None,
        Self::Xz,
        Self::Bzip2,
        Self::Zstd,
        Self::Gzip,
        Self::Brotli,
        Self::Lz4,
        Self::Lzip,
    ];

    /// The name Nix writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Xz => "xz",
            Self::Bzip2 => "bzip2",
            Self::Zstd => "zstd",
            Self::Gzip => "gzip",
            Self::Brotli => "br",
            Self::Lz4 => "lz4",
            Self::Lzip => "lzip",
        }
    }

    /// What Nix 2.8 appends to `nar/<filehash>.nar` when uploading
    /// (`BinaryCacheStore::addToStoreCommon`): gzip and none get nothing.
    pub fn file_extension(self) -> &'static str {
        match self {
            Self::None | Self::Gzip => "",
            Self::Xz => ".xz",
            Self::Bzip2 => ".bz2",
            Self::Zstd => ".zst",
            Self::Brotli => ".br",
            Self::Lz4 => ".lz4",
            Self::Lzip => ".lzip",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `Compression` name Nix does not know.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown compression `{0}`")]
pub struct UnknownCompression(pub String);

impl FromStr for Compression {
    type Err = UnknownCompression;

    fn from_str(s: &str) -> Result<Self, UnknownCompression> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCompression(s.to_owned()))
    }
}
