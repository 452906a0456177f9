//! SHA-256 digests as Nix writes them (`libutil/hash.cc`, `Hash::parseAny`
//! and `Hash::to_string`).
//!
//! Nix accepts a SHA-256 hash as `sha256:` followed by 64 hex digits, 52
//! nix-base32 digits or 44 base64 characters, or in SRI form
//! `sha256-<base64>`. narinfo files print `sha256:<nix-base32>`, NAR URLs
//! use the bare 52 nix-base32 digits, and Attic's upload header uses
//! `sha256:<hex>`. Only SHA-256 is used by binary caches, so the types here
//! hold exactly 32 bytes.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::base32::{self, Base32Error};

/// Bytes in a SHA-256 digest.
pub const SHA256_LEN: usize = 32;
/// Characters of a SHA-256 digest in nix-base32.
pub const SHA256_BASE32_LEN: usize = 52;
const SHA256_HEX_LEN: usize = 64;
const SHA256_BASE64_LEN: usize = 44;

/// Why a string or byte slice is not a SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum HashError {
    /// Neither `<algo>:` nor `<algo>-` prefix.
    #[error("hash has no `sha256:` or `sha256-` prefix")]
    MissingAlgorithm,
    /// A prefix naming another algorithm (`md5`, `sha1`, `sha512`).
    #[error("unsupported hash algorithm `{0}`, only sha256 is")]
    UnsupportedAlgorithm(String),
    /// The digest's length matches none of hex, nix-base32 or base64.
    #[error("a sha256 digest of {len} characters is neither hex, nix-base32 nor base64")]
    InvalidDigestLength {
        /// Characters after the prefix.
        len: usize,
    },
    /// 64 characters that are not all hex digits.
    #[error("invalid hex digest: {0}")]
    Hex(#[from] hex::FromHexError),
    /// 52 characters that are not valid nix-base32.
    #[error("invalid nix-base32 digest: {0}")]
    Base32(#[from] Base32Error),
    /// Base64 text (after `sha256:` or in SRI form) that does not decode.
    #[error("invalid base64 digest: {0}")]
    Base64(#[from] base64::DecodeError),
    /// Decoded base64 of the wrong length, or a raw slice not 32 bytes long.
    #[error("a sha256 digest is 32 bytes, got {len}")]
    WrongByteLength {
        /// Bytes actually present.
        len: usize,
    },
}

/// Parses any of Nix's spellings of a SHA-256 hash into its bytes.
fn parse_sha256(s: &str) -> Result<[u8; SHA256_LEN], HashError> {
    if let Some(digest) = s.strip_prefix("sha256:") {
        return parse_digest(digest);
    }
    if let Some(b64) = s.strip_prefix("sha256-") {
        return decode_base64(b64);
    }
    match s.find([':', '-']) {
        Some(at) => Err(HashError::UnsupportedAlgorithm(s[..at].to_owned())),
        None => Err(HashError::MissingAlgorithm),
    }
}

/// Parses the part after `sha256:`, telling the encoding by its length as
/// Nix does.
fn parse_digest(digest: &str) -> Result<[u8; SHA256_LEN], HashError> {
    match digest.len() {
        SHA256_HEX_LEN => {
            let mut out = [0u8; SHA256_LEN];
            hex::decode_to_slice(digest, &mut out)?;
            Ok(out)
        }
        SHA256_BASE32_LEN => Ok(base32::decode_array(digest)?),
        SHA256_BASE64_LEN => decode_base64(digest),
        len => Err(HashError::InvalidDigestLength { len }),
    }
}

fn decode_base64(b64: &str) -> Result<[u8; SHA256_LEN], HashError> {
    let bytes = BASE64.decode(b64)?;
    bytes_to_array(&bytes)
}

fn bytes_to_array(bytes: &[u8]) -> Result<[u8; SHA256_LEN], HashError> {
    bytes
        .try_into()
        .map_err(|_| HashError::WrongByteLength { len: bytes.len() })
}

/// Defines a SHA-256 newtype with Nix's parsing and printing. Two types
/// share it so a file hash can never be passed where a NAR hash is meant.
macro_rules! sha256_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; SHA256_LEN]);

        impl $name {
            /// Wraps a digest computed elsewhere.
            pub const fn from_bytes(bytes: [u8; SHA256_LEN]) -> Self {
                Self(bytes)
            }

            /// Wraps a digest read from storage (e.g. a database column),
            /// checking its length.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, HashError> {
                bytes_to_array(bytes).map(Self)
            }

            /// Hashes `data` in one go (tests and small inputs; stream
            /// large ones through [`sha2::Sha256`] and use `from_bytes`).
            pub fn digest(data: &[u8]) -> Self {
                Self(Sha256::digest(data).into())
            }

            /// Parses the bare 52-character nix-base32 digest, as found in
            /// URLs such as `nar/<base32>.nar`.
            pub fn from_base32_bare(s: &str) -> Result<Self, HashError> {
                Ok(Self(base32::decode_array(s)?))
            }

            /// The raw digest.
            pub const fn as_bytes(&self) -> &[u8; SHA256_LEN] {
                &self.0
            }

            /// The bare 52-character nix-base32 digest, for URLs.
            pub fn to_base32(&self) -> String {
                base32::encode(&self.0)
            }

            /// Lowercase hex, 64 characters (Attic's `sha256:<hex>`).
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// SRI form `sha256-<base64>`, as newer Nix prints hashes.
            pub fn to_sri(&self) -> String {
                format!("sha256-{}", BASE64.encode(self.0))
            }
        }

        /// `sha256:<nix-base32>`, the narinfo spelling.
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "sha256:{}", self.to_base32())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        /// Accepts `sha256:` + hex, nix-base32 or base64, and SRI.
        impl FromStr for $name {
            type Err = HashError;

            fn from_str(s: &str) -> Result<Self, HashError> {
                parse_sha256(s).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

sha256_newtype!(
    /// SHA-256 of an uncompressed NAR: the identity of a path's contents
    /// (narinfo `NarHash`, the key Larder deduplicates NARs by).
    NarHash
);

sha256_newtype!(
    /// SHA-256 of a NAR as stored compressed (narinfo `FileHash`); Nix
    /// names uploaded files `nar/<filehash>.nar.<ext>` after it.
    FileHash
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ABC_HEX: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const ABC_B32: &str = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";
    const ABC_B64: &str = "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=";

    fn abc() -> NarHash {
        NarHash::digest(b"abc")
    }

    #[test]
    fn parses_every_spelling() {
        for s in [
            format!("sha256:{ABC_HEX}"),
            format!("sha256:{}", ABC_HEX.to_uppercase()),
            format!("sha256:{ABC_B32}"),
            format!("sha256:{ABC_B64}"),
            format!("sha256-{ABC_B64}"),
        ] {
            assert_eq!(s.parse::<NarHash>().unwrap(), abc(), "{s}");
        }
    }

    #[test]
    fn prints_every_spelling() {
        let h = abc();
        assert_eq!(h.to_string(), format!("sha256:{ABC_B32}"));
        assert_eq!(h.to_base32(), ABC_B32);
        assert_eq!(h.to_hex(), ABC_HEX);
        assert_eq!(h.to_sri(), format!("sha256-{ABC_B64}"));
        assert_eq!(format!("{h:?}"), format!("NarHash(sha256:{ABC_B32})"));
        assert_eq!(NarHash::from_base32_bare(ABC_B32).unwrap(), h);
        assert_eq!(NarHash::from_slice(h.as_bytes()).unwrap(), h);
        assert_eq!(NarHash::from_bytes(*h.as_bytes()), h);
    }

    #[test]
    fn hello_nar_hash() {
        let s = "sha256:16mvl7v0ylzcg2n3xzjn41qhzbmgcn5iyarx16nn5l2r36n2kqci";
        assert_eq!(s.parse::<NarHash>().unwrap().to_string(), s);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(ABC_HEX.parse::<NarHash>(), Err(HashError::MissingAlgorithm));
        assert_eq!(
            format!("sha1:{ABC_HEX}").parse::<NarHash>(),
            Err(HashError::UnsupportedAlgorithm("sha1".into()))
        );
        assert_eq!(
            format!("sha512-{ABC_B64}").parse::<NarHash>(),
            Err(HashError::UnsupportedAlgorithm("sha512".into()))
        );
        assert_eq!(
            "sha256:abcd".parse::<NarHash>(),
            Err(HashError::InvalidDigestLength { len: 4 })
        );
        assert!(matches!(
            format!("sha256:{}", ABC_HEX.replace('b', "g")).parse::<NarHash>(),
            Err(HashError::Hex(_))
        ));
        assert!(matches!(
            format!("sha256:{}", ABC_B32.replace('b', "e")).parse::<NarHash>(),
            Err(HashError::Base32(_))
        ));
        assert!(matches!(
            "sha256-!!!!".parse::<NarHash>(),
            Err(HashError::Base64(_))
        ));
        assert_eq!(
            "sha256-AAAA".parse::<NarHash>(),
            Err(HashError::WrongByteLength { len: 3 })
        );
        assert_eq!(
            NarHash::from_slice(&[0; 20]),
            Err(HashError::WrongByteLength { len: 20 })
        );
        assert!(NarHash::from_base32_bare(ABC_HEX).is_err());
    }

    #[test]
    fn serde_is_the_display_string() {
        let json = serde_json::to_string(&abc()).unwrap();
        assert_eq!(json, format!("\"sha256:{ABC_B32}\""));
        assert_eq!(serde_json::from_str::<NarHash>(&json).unwrap(), abc());
        let hex_json = format!("\"sha256:{ABC_HEX}\"");
        assert_eq!(
            serde_json::from_str::<FileHash>(&hex_json)
                .unwrap()
                .as_bytes(),
            abc().as_bytes()
        );
        assert!(serde_json::from_str::<NarHash>("\"sha256:nope\"").is_err());
    }

    proptest! {
        #[test]
        fn round_trips(bytes in any::<[u8; 32]>()) {
            let h = NarHash::from_bytes(bytes);
            prop_assert_eq!(h.to_string().parse::<NarHash>().unwrap(), h);
            prop_assert_eq!(format!("sha256:{}", h.to_hex()).parse::<NarHash>().unwrap(), h);
            prop_assert_eq!(h.to_sri().parse::<NarHash>().unwrap(), h);
            prop_assert_eq!(NarHash::from_base32_bare(&h.to_base32()).unwrap(), h);
        }
    }
}
