//! Push-style streaming NAR validation: the grammar of [`super`], driven
//! one string at a time by the framing in [`super::reader`]. Memory is
//! bounded by [`MAX_DEPTH`] × [`MAX_NAME_LEN`] (the last name seen in each
//! open directory) plus the optional listing.

use super::listing::ListingBuilder;
use super::reader::{Framing, Reader, StringSink};
use super::{
    BadName, MAX_DEPTH, MAX_NAME_LEN, MAX_TARGET_LEN, NAR_MAGIC, NarError, NarListing, NarSummary,
};

/// Longest keyword in the grammar is `nix-archive-1` (13 bytes).
const MAX_TOKEN_LEN: u64 = 16;

/// Validates a NAR fed in pieces of any size, without buffering file
/// contents. Use it on uploads before trusting their `NarSize`, and to build
/// the `.ls` listing in the same pass.
///
/// ```
/// use larder_core::nix::nar::{NarNode, NarValidator};
///
/// let nar = NarNode::file(b"hello\n".to_vec()).to_bytes();
/// let mut v = NarValidator::new();
/// for piece in nar.chunks(3) {
///     v.update(piece)?;
/// }
/// let summary = v.finish()?;
/// assert_eq!(summary.nar_size, nar.len() as u64);
/// assert_eq!(summary.regular_files, 1);
/// # Ok::<(), larder_core::nix::nar::NarError>(())
/// ```
#[derive(Debug)]
pub struct NarValidator {
    reader: Reader,
    grammar: Grammar,
    /// Set on the first error; every later call returns it again.
    failed: Option<NarError>,
}

/// The grammar's state.
#[derive(Debug)]
struct Grammar {
    expect: Expect,
    /// One frame per open directory: the last entry name seen in it.
    dirs: Vec<Option<Box<[u8]>>>,
    executable: bool,
    summary: NarSummary,
    listing: Option<ListingBuilder>,
}

/// What the grammar expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Magic,
    NodeOpen,
    Type,
    TypeValue,
    RegularTag,
    ExecutableValue,
    ContentsTag,
    Contents,
    NodeClose,
    TargetTag,
    Target,
    DirTag,
    EntryOpen,
    NameTag,
    Name,
    NodeTag,
    EntryClose,
    Done,
}

impl Expect {
    /// For error messages.
    fn describe(self) -> &'static str {
        match self {
            Self::Magic => "`nix-archive-1`",
            Self::NodeOpen | Self::EntryOpen => "`(`",
            Self::Type => "`type`",
            Self::TypeValue => "`regular`, `symlink` or `directory`",
            Self::RegularTag => "`executable` or `contents`",
            Self::ExecutableValue => "an empty string",
            Self::ContentsTag => "`contents`",
            Self::Contents => "file contents",
            Self::NodeClose | Self::EntryClose => "`)`",
            Self::TargetTag => "`target`",
            Self::Target => "a symlink target",
            Self::DirTag => "`entry` or `)`",
            Self::NameTag => "`name`",
            Self::Name => "an entry name",
            Self::NodeTag => "`node`",
            Self::Done => "the end of the NAR",
        }
    }
}

impl Default for NarValidator {
    fn default() -> Self {
        Self::new()
    }
}

impl NarValidator {
    /// A validator that only checks and counts.
    pub fn new() -> Self {
        Self {
            reader: Reader::new(),
            grammar: Grammar {
                expect: Expect::Magic,
                dirs: Vec::new(),
                executable: false,
                summary: NarSummary::default(),
                listing: None,
            },
            failed: None,
        }
    }

    /// A validator that also builds the NAR listing (memory proportional to
    /// the number of entries).
    pub fn with_listing() -> Self {
        let mut v = Self::new();
        v.grammar.listing = Some(ListingBuilder::default());
        v
    }

    /// Bytes accepted so far.
    pub fn bytes_seen(&self) -> u64 {
        self.reader.offset()
    }

    /// Consumes the next piece of the NAR. After an error the validator is
    /// poisoned and returns the same error for every later call.
    pub fn update(&mut self, data: &[u8]) -> Result<(), NarError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.reader
            .feed(data, &mut self.grammar)
            .inspect_err(|e| self.failed = Some(e.clone()))
    }

    /// Checks that the NAR is complete and returns what it held.
    pub fn finish(self) -> Result<NarSummary, NarError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut g = self.grammar;
        if g.expect != Expect::Done || !self.reader.at_boundary() {
            let expected = if self.reader.in_padding() {
                "padding"
            } else {
                g.expect.describe()
            };
            return Err(NarError::Truncated {
                offset: self.reader.offset(),
                expected,
            });
        }
        g.summary.nar_size = self.reader.offset();
        g.summary.listing = g.listing.take().and_then(ListingBuilder::finish);
        Ok(g.summary)
    }
}

impl StringSink for Grammar {
    fn is_done(&self) -> bool {
        self.expect == Expect::Done
    }

    fn on_len(&mut self, start: u64, len: u64) -> Result<Framing, NarError> {
        let limit = match self.expect {
            Expect::Contents => {
                // Declared, not yet read: saturate rather than overflow on
                // a hostile length (exact for any NAR that completes).
                self.summary.contents_size = self.summary.contents_size.saturating_add(len);
                if let Some(listing) = &mut self.listing {
                    listing.regular(self.executable, len, start + 8);
                }
                self.expect = Expect::NodeClose;
                return Ok(Framing::Skip);
            }
            Expect::Name => {
                (len > MAX_NAME_LEN as u64).then_some(NarError::NameTooLong { offset: start, len })
            }
            Expect::Target => (len > MAX_TARGET_LEN as u64)
                .then_some(NarError::TargetTooLong { offset: start, len }),
            Expect::Magic => (len > MAX_TOKEN_LEN).then_some(NarError::BadMagic { offset: start }),
            other => (len > MAX_TOKEN_LEN).then(|| NarError::TokenTooLong {
                offset: start,
                len,
                expected: other.describe(),
            }),
        };
        match limit {
            Some(e) => Err(e),
            // Every limit above is far below `usize::MAX`.
            None => Ok(Framing::Buffer(len as usize)),
        }
    }

    fn on_string(&mut self, start: u64, s: Vec<u8>) -> Result<(), NarError> {
        let unexpected = |expect: Expect, s: Vec<u8>| NarError::UnexpectedToken {
            offset: start,
            expected: expect.describe(),
            found: s.into_boxed_slice(),
        };
        self.expect = match (self.expect, s.as_slice()) {
            (Expect::Magic, m) if m == NAR_MAGIC => Expect::NodeOpen,
            (Expect::Magic, _) => return Err(NarError::BadMagic { offset: start }),
            (Expect::NodeOpen, b"(") => Expect::Type,
            (Expect::Type, b"type") => Expect::TypeValue,
            (Expect::TypeValue, b"regular") => {
                self.summary.regular_files += 1;
                self.executable = false;
                Expect::RegularTag
            }
            (Expect::TypeValue, b"symlink") => {
                self.summary.symlinks += 1;
                Expect::TargetTag
            }
            (Expect::TypeValue, b"directory") => {
                if self.dirs.len() >= MAX_DEPTH {
                    return Err(NarError::TooDeep { offset: start });
                }
                self.summary.directories += 1;
                self.dirs.push(None);
                if let Some(listing) = &mut self.listing {
                    listing.enter_directory();
                }
                Expect::DirTag
            }
            (Expect::RegularTag, b"executable") => Expect::ExecutableValue,
            (Expect::RegularTag | Expect::ContentsTag, b"contents") => Expect::Contents,
            (Expect::ExecutableValue, b"") => {
                self.executable = true;
                self.summary.executable_files += 1;
                Expect::ContentsTag
            }
            (Expect::NodeClose, b")") => self.node_done(),
            (Expect::TargetTag, b"target") => Expect::Target,
            (Expect::Target, target) => {
                if target.is_empty() || target.contains(&0) {
                    return Err(NarError::InvalidTarget { offset: start });
                }
                if let Some(listing) = &mut self.listing {
                    listing.symlink(s.into_boxed_slice());
                }
                Expect::NodeClose
            }
            (Expect::DirTag, b"entry") => Expect::EntryOpen,
            (Expect::DirTag, b")") => {
                self.dirs.pop();
                if let Some(listing) = &mut self.listing {
                    listing.leave_directory();
                }
                self.node_done()
            }
            (Expect::EntryOpen, b"(") => Expect::NameTag,
            (Expect::NameTag, b"name") => Expect::Name,
            (Expect::Name, _) => {
                self.check_name(start, &s)?;
                let name = s.into_boxed_slice();
                if let Some(listing) = &mut self.listing {
                    listing.entry_name(name.clone());
                }
                if let Some(last) = self.dirs.last_mut() {
                    *last = Some(name);
                }
                Expect::NodeTag
            }
            (Expect::NodeTag, b"node") => Expect::NodeOpen,
            (Expect::EntryClose, b")") => Expect::DirTag,
            (expect, _) => return Err(unexpected(expect, s)),
        };
        Ok(())
    }
}

impl Grammar {
    /// A node closed: the NAR is done, or its directory entry is.
    fn node_done(&self) -> Expect {
        if self.dirs.is_empty() {
            Expect::Done
        } else {
            Expect::EntryClose
        }
    }

    /// Checks a directory entry name and its order after the previous one.
    fn check_name(&self, offset: u64, name: &[u8]) -> Result<(), NarError> {
        let problem = if name.is_empty() {
            Some(BadName::Empty)
        } else if name == b"." || name == b".." {
            Some(BadName::DotOrDotDot)
        } else if name.contains(&b'/') {
            Some(BadName::Slash)
        } else if name.contains(&0) {
            Some(BadName::Nul)
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(NarError::InvalidName {
                offset,
                name: name.into(),
                problem,
            });
        }
        if let Some(Some(previous)) = self.dirs.last() {
            match name.cmp(previous) {
                std::cmp::Ordering::Greater => {}
                std::cmp::Ordering::Equal => {
                    return Err(NarError::DuplicateName {
                        offset,
                        name: name.into(),
                    });
                }
                std::cmp::Ordering::Less => {
                    return Err(NarError::UnsortedNames {
                        offset,
                        name: name.into(),
                        previous: previous.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Validates a whole NAR held in memory.
pub fn validate(nar: &[u8]) -> Result<NarSummary, NarError> {
    let mut v = NarValidator::new();
    v.update(nar)?;
    v.finish()
}

/// Validates a whole NAR held in memory and returns its listing.
pub fn list(nar: &[u8]) -> Result<(NarSummary, NarListing), NarError> {
    let mut v = NarValidator::with_listing();
    v.update(nar)?;
    let mut summary = v.finish()?;
    match summary.listing.take() {
        Some(listing) => Ok((summary, listing)),
        // A finished NAR always has a root node.
        None => Err(NarError::Truncated {
            offset: summary.nar_size,
            expected: Expect::NodeOpen.describe(),
        }),
    }
}
