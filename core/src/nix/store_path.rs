//! Store paths as Nix 2.8 parses them (`libstore/path.cc`,
//! `StorePath::StorePath` and `checkName`; `Store::parseStorePath`).
//!
//! A store path is `<store dir>/<hash>-<name>`: the hash is 32 nix-base32
//! characters (a 160-bit digest), the name 1 to 211 characters from
//! `A-Za-z0-9+-._?=` that does not start with `.`. Binary caches key
//! everything by the hash part (`<hash>.narinfo`), so it gets its own type.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use super::base32::{self, Base32Error};

/// Characters in the hash part of a store path.
pub const HASH_LEN: usize = 32;
/// Bytes of digest the hash part encodes.
const HASH_BYTES: usize = 20;
/// Longest name Nix accepts (so a base name fits in 255 bytes).
pub const MAX_NAME_LEN: usize = 211;

/// Why a string is not a store path, hash part or name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorePathError {
    /// The hash part is not 32 valid nix-base32 characters.
    #[error("invalid store path hash: {0}")]
    InvalidHash(#[from] Base32Error),
    /// Shorter than `<32-char hash>-<1-char name>`.
    #[error("store path base name has {len} bytes, too short for `<hash>-<name>`")]
    TooShort {
        /// Bytes in the base name.
        len: usize,
    },
    /// The character after the hash is not `-`.
    #[error("store path base name lacks the `-` after the hash")]
    MissingDash,
    /// An empty name.
    #[error("store path name is empty")]
    EmptyName,
    /// A name longer than [`MAX_NAME_LEN`].
    #[error("store path name has {len} characters, more than {MAX_NAME_LEN}")]
    NameTooLong {
        /// Characters in the name.
        len: usize,
    },
    /// A name starting with `.` (Nix forbids hidden names).
    #[error("store path name starts with `.`")]
    NameStartsWithDot,
    /// A byte outside `A-Za-z0-9+-._?=`.
    #[error("invalid byte {byte:#04x} at position {position} of store path name")]
    InvalidNameByte {
        /// The offending byte.
        byte: u8,
        /// Byte index in the name.
        position: usize,
    },
    /// The directory of an absolute store path is not a store directory.
    #[error("invalid store directory: {0}")]
    StoreDir(#[from] StoreDirError),
    /// An absolute path not directly inside the store directory.
    #[error("`{path}` is not a path directly inside store directory `{store_dir}`")]
    NotInStore {
        /// The path given.
        path: String,
        /// The store directory it was checked against.
        store_dir: StoreDir,
    },
}

/// Why a string is not a store directory.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreDirError {
    /// Does not start with `/`.
    #[error("store directory `{0}` is not absolute")]
    NotAbsolute(String),
    /// Ends with `/` (including `/` alone).
    #[error("store directory `{0}` has a trailing slash")]
    TrailingSlash(String),
    /// Has an empty, `.` or `..` component (not canonical).
    #[error("store directory `{0}` is not canonical")]
    NotCanonical(String),
    /// Contains NUL or a line break, which would corrupt narinfo files.
    #[error("store directory contains a control character")]
    ControlChar,
}

/// The hash part of a store path: 32 nix-base32 characters. Validated on
/// construction, so `as_str` can go into URLs and SQL as is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePathHash(String);

impl StorePathHash {
    /// The 32 characters, e.g. for `<hash>.narinfo`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for StorePathHash {
    type Err = StorePathError;

    fn from_str(s: &str) -> Result<Self, StorePathError> {
        base32::decode_array::<HASH_BYTES>(s)?;
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name part of a store path (`hello-2.10`), checked by Nix 2.8's rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePathName(String);

impl StorePathName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for StorePathName {
    type Err = StorePathError;

    fn from_str(s: &str) -> Result<Self, StorePathError> {
        if s.is_empty() {
            return Err(StorePathError::EmptyName);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(StorePathError::NameTooLong { len: s.len() });
        }
        if s.starts_with('.') {
            return Err(StorePathError::NameStartsWithDot);
        }
        let bad = s
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || b"+-._?=".contains(&b)));
        if let Some(position) = bad {
            return Err(StorePathError::InvalidNameByte {
                byte: s.as_bytes()[position],
                position,
            });
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for StorePathName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A store directory such as `/nix/store`: absolute, canonical, without a
/// trailing slash. Caches record it (`StoreDir:` in `nix-cache-info`) because
/// paths and signatures are only meaningful relative to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreDir(String);

impl StoreDir {
    /// The directory as text, e.g. `/nix/store`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for StoreDir {
    /// `/nix/store`, the store directory of every common Nix installation.
    fn default() -> Self {
        Self("/nix/store".to_owned())
    }
}

impl FromStr for StoreDir {
    type Err = StoreDirError;

    fn from_str(s: &str) -> Result<Self, StoreDirError> {
        let Some(rest) = s.strip_prefix('/') else {
            return Err(StoreDirError::NotAbsolute(s.to_owned()));
        };
        if s.ends_with('/') {
            return Err(StoreDirError::TrailingSlash(s.to_owned()));
        }
        if s.bytes().any(|b| b == 0 || b == b'\n' || b == b'\r') {
            return Err(StoreDirError::ControlChar);
        }
        if rest
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(StoreDirError::NotCanonical(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A store path without its directory: `<hash>-<name>`. Caches may serve
/// any store directory, so the directory is supplied where a path is
/// printed in full ([`StorePath::to_absolute`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    /// The 32-character digest, the key of the path in a cache.
    pub hash: StorePathHash,
    /// The human-readable name.
    pub name: StorePathName,
}

impl StorePath {
    /// Parses `<hash>-<name>`, the form of narinfo `References` and of
    /// Attic's upload metadata.
    pub fn from_base_name(s: &str) -> Result<Self, StorePathError> {
        if s.len() < HASH_LEN + 2 {
            return Err(StorePathError::TooShort { len: s.len() });
        }
        let (hash, rest) = s
            .split_at_checked(HASH_LEN)
            .ok_or(StorePathError::MissingDash)?;
        let name = rest.strip_prefix('-').ok_or(StorePathError::MissingDash)?;
        Ok(Self {
            hash: hash.parse()?,
            name: name.parse()?,
        })
    }

    /// Parses `<store dir>/<hash>-<name>` (narinfo `StorePath`, `Deriver`),
    /// rejecting paths elsewhere or below a store path.
    pub fn from_absolute_path(store_dir: &StoreDir, path: &str) -> Result<Self, StorePathError> {
        let not_in_store = || StorePathError::NotInStore {
            path: path.to_owned(),
            store_dir: store_dir.clone(),
        };
        let base = path
            .strip_prefix(store_dir.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(not_in_store)?;
        if base.contains('/') {
            return Err(not_in_store());
        }
        Self::from_base_name(base)
    }

    /// `<hash>-<name>`.
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash, self.name)
    }

    /// `<store dir>/<hash>-<name>`.
    pub fn to_absolute(&self, store_dir: &StoreDir) -> String {
        format!("{store_dir}/{}-{}", self.hash, self.name)
    }
}

/// The base name `<hash>-<name>`.
impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.hash, self.name)
    }
}

/// Parses a base name, like [`StorePath::from_base_name`].
impl FromStr for StorePath {
    type Err = StorePathError;

    fn from_str(s: &str) -> Result<Self, StorePathError> {
        Self::from_base_name(s)
    }
}

/// A store path with the directory it was pushed under,
/// `<store dir>/<hash>-<name>`. A cache's store directory can change after
/// paths were pushed, so a path that was stored keeps its own directory
/// rather than borrowing the cache's current one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AbsoluteStorePath {
    /// The directory it is in.
    pub store_dir: StoreDir,
    /// The path without its directory.
    pub path: StorePath,
}

impl AbsoluteStorePath {
    /// The path `path` in `store_dir`.
    pub fn new(store_dir: StoreDir, path: StorePath) -> Self {
        Self { store_dir, path }
    }
}

/// `<store dir>/<hash>-<name>`.
impl fmt::Display for AbsoluteStorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.store_dir, self.path)
    }
}

/// Splits at the last `/`: the directory before it must be a store
/// directory, the rest a base name.
impl FromStr for AbsoluteStorePath {
    type Err = StorePathError;

    fn from_str(s: &str) -> Result<Self, StorePathError> {
        let (dir, base) = s
            .rsplit_once('/')
            .ok_or_else(|| StoreDirError::NotAbsolute(s.to_owned()))?;
        Ok(Self {
            store_dir: dir.parse()?,
            path: base.parse()?,
        })
    }
}

/// Serde as the `Display` string, parsed back with `FromStr`.
macro_rules! serde_as_string {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_as_string!(
    StorePathHash,
    StorePathName,
    StoreDir,
    StorePath,
    AbsoluteStorePath
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HELLO: &str = "xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10";

    #[test]
    fn parses_hello() {
        let p = StorePath::from_base_name(HELLO).unwrap();
        assert_eq!(p.hash.as_str(), "xcp9cav49dmsjbwdjlmkjxj10gkpx553");
        assert_eq!(p.name.as_str(), "hello-2.10");
        assert_eq!(p.base_name(), HELLO);
        assert_eq!(p.to_string(), HELLO);
        let dir = StoreDir::default();
        let abs = p.to_absolute(&dir);
        assert_eq!(abs, format!("/nix/store/{HELLO}"));
        assert_eq!(StorePath::from_absolute_path(&dir, &abs).unwrap(), p);
    }

    #[test]
    fn other_store_dir() {
        let dir: StoreDir = "/var/lib/my store".parse().unwrap();
        let p: StorePath = HELLO.parse().unwrap();
        let abs = p.to_absolute(&dir);
        assert_eq!(abs, format!("/var/lib/my store/{HELLO}"));
        assert_eq!(StorePath::from_absolute_path(&dir, &abs).unwrap(), p);
        assert!(StorePath::from_absolute_path(&StoreDir::default(), &abs).is_err());
    }

    #[test]
    fn absolute_paths_keep_their_directory() {
        for text in [
            format!("/nix/store/{HELLO}"),
            format!("/var/lib/my store/{HELLO}"),
        ] {
            let p: AbsoluteStorePath = text.parse().unwrap();
            assert_eq!(p.path.to_string(), HELLO);
            assert_eq!(p.to_string(), text);
        }
        let err = |s: &str| s.parse::<AbsoluteStorePath>().unwrap_err();
        assert!(matches!(err(HELLO), StorePathError::StoreDir(_)));
        assert!(matches!(
            err(&format!("nix/store/{HELLO}")),
            StorePathError::StoreDir(StoreDirError::NotAbsolute(_))
        ));
        assert!(matches!(
            err(&format!("/{HELLO}")),
            StorePathError::StoreDir(_)
        ));
        assert_eq!(err("/nix/store/x"), StorePathError::TooShort { len: 1 });
    }

    #[test]
    fn rejects_bad_base_names() {
        let hash = "xcp9cav49dmsjbwdjlmkjxj10gkpx553";
        let err = |s: &str| StorePath::from_base_name(s).unwrap_err();
        assert_eq!(err(""), StorePathError::TooShort { len: 0 });
        assert_eq!(
            err(&format!("{hash}-")),
            StorePathError::TooShort { len: 33 }
        );
        assert_eq!(err(&format!("{hash}_hello")), StorePathError::MissingDash);
        assert!(matches!(
            err("ecp9cav49dmsjbwdjlmkjxj10gkpx553-hello"),
            StorePathError::InvalidHash(Base32Error::InvalidChar {
                byte: b'e',
                position: 0
            })
        ));
        assert_eq!(
            err(&format!("{hash}-.hidden")),
            StorePathError::NameStartsWithDot
        );
        assert_eq!(
            err(&format!("{hash}-a/b")),
            StorePathError::InvalidNameByte {
                byte: b'/',
                position: 1
            }
        );
        assert_eq!(
            err(&format!("{hash}-caf\u{e9}")),
            StorePathError::InvalidNameByte {
                byte: 0xc3,
                position: 3
            }
        );
        // Multi-byte character straddling the hash boundary.
        assert_eq!(
            err(&format!("{}\u{e9}-hello", &hash[..31])),
            StorePathError::MissingDash
        );
    }

    #[test]
    fn name_rules() {
        let longest = "x".repeat(211);
        for ok in ["a", "hello-2.10", "A+B_c?d=e.f", "-leading-dash", &longest] {
            assert_eq!(ok.parse::<StorePathName>().unwrap().as_str(), ok);
        }
        assert_eq!("".parse::<StorePathName>(), Err(StorePathError::EmptyName));
        assert_eq!(
            "x".repeat(212).parse::<StorePathName>(),
            Err(StorePathError::NameTooLong { len: 212 })
        );
        assert_eq!(
            ".a".parse::<StorePathName>(),
            Err(StorePathError::NameStartsWithDot)
        );
        for bad in [" ", "a b", "a:b", "a@b", "a\0b", "a\nb", "a~b"] {
            assert!(
                matches!(
                    bad.parse::<StorePathName>(),
                    Err(StorePathError::InvalidNameByte { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn hash_rules() {
        assert!(
            "xcp9cav49dmsjbwdjlmkjxj10gkpx553"
                .parse::<StorePathHash>()
                .is_ok()
        );
        assert!(matches!(
            "xcp9cav49dmsjbwdjlmkjxj10gkpx55".parse::<StorePathHash>(),
            Err(StorePathError::InvalidHash(Base32Error::WrongLength {
                expected: 32,
                actual: 31
            }))
        ));
        assert!(
            "XCP9CAV49DMSJBWDJLMKJXJ10GKPX553"
                .parse::<StorePathHash>()
                .is_err()
        );
    }

    #[test]
    fn absolute_path_errors() {
        let dir = StoreDir::default();
        let bad = [
            format!("/nix/store2/{HELLO}"),
            format!("/nix/store/{HELLO}/bin/hello"),
            format!("/nix/store//{HELLO}"),
            format!("nix/store/{HELLO}"),
            HELLO.to_owned(),
            "/nix/store".to_owned(),
        ];
        for path in bad {
            let e = StorePath::from_absolute_path(&dir, &path).unwrap_err();
            assert!(
                matches!(e, StorePathError::NotInStore { .. }),
                "{path}: {e:?}"
            );
        }
        assert_eq!(
            StorePath::from_absolute_path(&dir, "/nix/store/short").unwrap_err(),
            StorePathError::TooShort { len: 5 }
        );
    }

    #[test]
    fn store_dir_rules() {
        assert_eq!(StoreDir::default().as_str(), "/nix/store");
        assert_eq!(
            "/gnu/store".parse::<StoreDir>().unwrap().to_string(),
            "/gnu/store"
        );
        assert!(matches!(
            "nix/store".parse::<StoreDir>(),
            Err(StoreDirError::NotAbsolute(_))
        ));
        assert!(matches!(
            "/nix/store/".parse::<StoreDir>(),
            Err(StoreDirError::TrailingSlash(_))
        ));
        assert!(matches!(
            "/".parse::<StoreDir>(),
            Err(StoreDirError::TrailingSlash(_))
        ));
        assert!(matches!(
            "".parse::<StoreDir>(),
            Err(StoreDirError::NotAbsolute(_))
        ));
        for bad in ["//nix", "/nix//store", "/nix/./store", "/nix/../store"] {
            assert!(
                matches!(bad.parse::<StoreDir>(), Err(StoreDirError::NotCanonical(_))),
                "{bad}"
            );
        }
        assert_eq!(
            "/nix\n/store".parse::<StoreDir>(),
            Err(StoreDirError::ControlChar)
        );
    }

    #[test]
    fn serde_as_strings() {
        let p: StorePath = HELLO.parse().unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, format!("\"{HELLO}\""));
        assert_eq!(serde_json::from_str::<StorePath>(&json).unwrap(), p);
        assert_eq!(
            serde_json::to_string(&p.hash).unwrap(),
            "\"xcp9cav49dmsjbwdjlmkjxj10gkpx553\""
        );
        assert_eq!(
            serde_json::from_str::<StorePathHash>("\"xcp9cav49dmsjbwdjlmkjxj10gkpx553\"").unwrap(),
            p.hash
        );
        assert!(serde_json::from_str::<StorePathHash>("\"nope\"").is_err());
        assert_eq!(
            serde_json::from_str::<StoreDir>("\"/nix/store\"").unwrap(),
            StoreDir::default()
        );
        assert!(serde_json::from_str::<StoreDir>("\"/nix/store/\"").is_err());
    }

    #[test]
    fn ordering_is_base_name_order() {
        let a: StorePath = "00000000000000000000000000000000-z".parse().unwrap();
        let b: StorePath = "00000000000000000000000000000001-a".parse().unwrap();
        let c: StorePath = "00000000000000000000000000000001-a.b".parse().unwrap();
        assert!(a < b && b < c);
        assert!(a.base_name() < b.base_name() && b.base_name() < c.base_name());
    }

    fn arb_store_path() -> impl Strategy<Value = StorePath> {
        (any::<[u8; 20]>(), "[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]{0,40}").prop_map(|(digest, name)| {
            StorePath {
                hash: base32::encode(&digest).parse().expect("valid hash"),
                name: name.parse().expect("valid name"),
            }
        })
    }

    proptest! {
        #[test]
        fn round_trips(p in arb_store_path()) {
            let dir = StoreDir::default();
            prop_assert_eq!(StorePath::from_base_name(&p.base_name()).unwrap(), p.clone());
            prop_assert_eq!(StorePath::from_absolute_path(&dir, &p.to_absolute(&dir)).unwrap(), p);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            if let Ok(p) = StorePath::from_base_name(&s) {
                prop_assert_eq!(p.base_name(), s);
            }
        }

        #[test]
        fn long_names(name in "[a-z]{1,211}") {
            let parsed: StorePathName = name.parse().unwrap();
            prop_assert_eq!(parsed.as_str(), name.as_str());
        }
    }
}
