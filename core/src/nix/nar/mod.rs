//! The Nix Archive format (NAR), as written by `nix-store --dump` and
//! specified in the Nix manual ("Nix Archive (NAR) format") and in Eelco
//! Dolstra's thesis, figure 5.2.
//!
//! Every item of a NAR is a *string*: a 64-bit little-endian length, the
//! bytes, then zero bytes up to a multiple of 8. The grammar is
//!
//! ```text
//! nar       = "nix-archive-1" node
//! node      = "(" "type" ( regular | symlink | directory ) ")"
//! regular   = "regular" [ "executable" "" ] "contents" <bytes>
//! symlink   = "symlink" "target" <target>
//! directory = "directory" { "entry" "(" "name" <name> "node" node ")" }
//! ```
//!
//! with directory entries in strictly ascending byte order of name. The
//! encoding is canonical: one file tree has exactly one NAR, which is why
//! the NAR hash identifies a store path's contents.
//!
//! - [`NarValidator`] checks a NAR pushed to it in pieces of any size, with
//!   memory bounded by the limits below, and optionally builds the listing
//!   ([`NarListing`]) that Nix serves as `<hash>.ls`.
//! - [`NarNode`] describes a tree in memory and serialises it, to make
//!   synthetic NARs for tests and tools.

mod builder;
mod listing;
mod reader;
mod validate;

use thiserror::Error;

pub use builder::NarNode;
pub use listing::{ListingNode, NarListing};
pub use validate::{NarValidator, list, validate};

/// The string every NAR starts with.
pub const NAR_MAGIC: &[u8] = b"nix-archive-1";
/// Longest directory entry name accepted (`NAME_MAX` on Linux).
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target accepted (`PATH_MAX - 1` on Linux).
pub const MAX_TARGET_LEN: usize = 4095;
/// Deepest directory nesting accepted; the root directory counts as 1.
pub const MAX_DEPTH: usize = 256;

/// What a NAR held, learned while validating it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NarSummary {
    /// Length of the NAR in bytes (narinfo `NarSize`).
    pub nar_size: u64,
    /// Regular files, executable or not.
    pub regular_files: u64,
    /// Regular files marked executable.
    pub executable_files: u64,
    /// Directories, the root included if it is one.
    pub directories: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Sum of the sizes of all regular files.
    pub contents_size: u64,
    /// The listing, when the validator was made with
    /// [`NarValidator::with_listing`].
    pub listing: Option<NarListing>,
}

/// Why a directory entry name is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadName {
    /// The empty string.
    Empty,
    /// `.` or `..`, which would escape or alias the directory.
    DotOrDotDot,
    /// Contains `/`.
    Slash,
    /// Contains a NUL byte.
    Nul,
}

impl std::fmt::Display for BadName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Empty => "is empty",
            Self::DotOrDotDot => "is `.` or `..`",
            Self::Slash => "contains `/`",
            Self::Nul => "contains NUL",
        })
    }
}

/// Why bytes are not a valid NAR. Every variant carries the byte offset in
/// the NAR where the offending item starts (for padding, the offending
/// byte), so a rejected upload can be reported precisely.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NarError {
    /// The first string is not `nix-archive-1`.
    #[error("not a NAR: bad magic at offset {offset}")]
    BadMagic {
        /// Where the first string starts (0).
        offset: u64,
    },
    /// A keyword other than the grammar allows here.
    #[error("unexpected token `{}` at offset {offset}, expected {expected}", found.escape_ascii())]
    UnexpectedToken {
        /// Where the string starts.
        offset: u64,
        /// What the grammar allowed.
        expected: &'static str,
        /// What was there.
        found: Box<[u8]>,
    },
    /// A length prefix too long for any keyword the grammar allows here.
    #[error("string of {len} bytes at offset {offset} where {expected} was expected")]
    TokenTooLong {
        /// Where the string starts.
        offset: u64,
        /// The length prefix.
        len: u64,
        /// What the grammar allowed.
        expected: &'static str,
    },
    /// A padding byte that is not zero (the encoding would not be canonical).
    #[error("non-zero padding byte at offset {offset}")]
    NonZeroPadding {
        /// The offending byte.
        offset: u64,
    },
    /// A directory entry name longer than [`MAX_NAME_LEN`].
    #[error("entry name of {len} bytes at offset {offset}, more than {MAX_NAME_LEN}")]
    NameTooLong {
        /// Where the name string starts.
        offset: u64,
        /// Its length prefix.
        len: u64,
    },
    /// A directory entry name that is not a single path component.
    #[error("entry name `{}` at offset {offset} {problem}", name.escape_ascii())]
    InvalidName {
        /// Where the name string starts.
        offset: u64,
        /// The name.
        name: Box<[u8]>,
        /// What is wrong with it.
        problem: BadName,
    },
    /// An entry whose name equals the previous entry's.
    #[error("duplicate entry name `{}` at offset {offset}", name.escape_ascii())]
    DuplicateName {
        /// Where the name string starts.
        offset: u64,
        /// The repeated name.
        name: Box<[u8]>,
    },
    /// An entry whose name sorts before the previous entry's.
    #[error(
        "entry `{}` at offset {offset} is out of order after `{}`",
        name.escape_ascii(),
        previous.escape_ascii()
    )]
    UnsortedNames {
        /// Where the name string starts.
        offset: u64,
        /// The name out of place.
        name: Box<[u8]>,
        /// The name before it.
        previous: Box<[u8]>,
    },
    /// A symlink target longer than [`MAX_TARGET_LEN`].
    #[error("symlink target of {len} bytes at offset {offset}, more than {MAX_TARGET_LEN}")]
    TargetTooLong {
        /// Where the target string starts.
        offset: u64,
        /// Its length prefix.
        len: u64,
    },
    /// An empty symlink target, or one containing NUL: no file system can
    /// hold it.
    #[error("invalid symlink target at offset {offset}")]
    InvalidTarget {
        /// Where the target string starts.
        offset: u64,
    },
    /// Directories nested deeper than [`MAX_DEPTH`].
    #[error("directories nested deeper than {MAX_DEPTH} at offset {offset}")]
    TooDeep {
        /// Where the offending `directory` keyword starts.
        offset: u64,
    },
    /// Bytes after the root node's closing `)`.
    #[error("trailing data after the NAR at offset {offset}")]
    TrailingData {
        /// First byte past the NAR.
        offset: u64,
    },
    /// The input ended inside the NAR.
    #[error("NAR truncated at offset {offset}, expected {expected}")]
    Truncated {
        /// Length of the input.
        offset: u64,
        /// What was still to come.
        expected: &'static str,
    },
}

impl NarError {
    /// The byte offset where validation failed.
    pub fn offset(&self) -> u64 {
        match self {
            Self::BadMagic { offset }
            | Self::UnexpectedToken { offset, .. }
            | Self::TokenTooLong { offset, .. }
            | Self::NonZeroPadding { offset }
            | Self::NameTooLong { offset, .. }
            | Self::InvalidName { offset, .. }
            | Self::DuplicateName { offset, .. }
            | Self::UnsortedNames { offset, .. }
            | Self::TargetTooLong { offset, .. }
            | Self::InvalidTarget { offset }
            | Self::TooDeep { offset }
            | Self::TrailingData { offset }
            | Self::Truncated { offset, .. } => *offset,
        }
    }
}

#[cfg(test)]
mod tests;
