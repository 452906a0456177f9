//! NAR listings: the `<hash>.ls` document a binary cache serves when Nix
//! writes it with `write-nar-listing=true` (`libstore/nar-accessor.cc`,
//! `listNar`, wrapped by `BinaryCacheStore::addToStore` as
//! `{"version":1,"root":…}`).
//!
//! Nix 2.8 writes compact JSON with keys in this order: regular files
//! `{"type":"regular","size":N,"executable":true,"narOffset":N}` (the
//! `executable` key only when true), directories
//! `{"type":"directory","entries":{…}}` with names in byte order, symlinks
//! `{"type":"symlink","target":"…"}`. Strings escape `"`, `\`, and control
//! characters, and pass other bytes through unchanged (even invalid UTF-8),
//! which [`NarListing::to_json`] reproduces byte for byte. `narOffset` is
//! the offset of the file's first byte in the NAR, so `nix store cat` can
//! read a file with one ranged request.

use std::collections::BTreeMap;

/// The listing of a whole NAR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarListing {
    /// The NAR's root node.
    pub root: ListingNode,
}

/// One node of a [`NarListing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListingNode {
    /// A regular file.
    Regular {
        /// Length of the contents.
        size: u64,
        /// Whether the executable bit is set.
        executable: bool,
        /// Offset of the contents' first byte in the NAR.
        nar_offset: u64,
    },
    /// A symbolic link.
    Symlink {
        /// Where it points (raw bytes, as in the NAR).
        target: Box<[u8]>,
    },
    /// A directory, entries in NAR (byte) order.
    Directory {
        /// Entry name to node.
        entries: BTreeMap<Box<[u8]>, ListingNode>,
    },
}

impl NarListing {
    /// The `.ls` document exactly as Nix 2.8 writes it.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(b"{\"version\":1,\"root\":");
        self.root.write_json(&mut out);
        out.push(b'}');
        out
    }
}

impl ListingNode {
    /// This node alone, as `nix nar ls --json -R` prints it.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.write_json(&mut out);
        out
    }

    /// Appends this node as Nix's `listNar` writes it.
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Self::Regular {
                size,
                executable,
                nar_offset,
            } => {
                out.extend_from_slice(format!("{{\"type\":\"regular\",\"size\":{size}").as_bytes());
                if *executable {
                    out.extend_from_slice(b",\"executable\":true");
                }
                // Nix omits a zero offset, which no real NAR has.
                if *nar_offset != 0 {
                    out.extend_from_slice(format!(",\"narOffset\":{nar_offset}").as_bytes());
                }
                out.push(b'}');
            }
            Self::Symlink { target } => {
                out.extend_from_slice(b"{\"type\":\"symlink\",\"target\":");
                write_json_string(out, target);
                out.push(b'}');
            }
            Self::Directory { entries } => {
                out.extend_from_slice(b"{\"type\":\"directory\",\"entries\":{");
                for (i, (name, node)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_json_string(out, name);
                    out.push(b':');
                    node.write_json(out);
                }
                out.extend_from_slice(b"}}");
            }
        }
    }
}

/// Nix 2.8's `toJSON` for strings: escapes `"`, `\`, `\n`, `\r`, `\t` and
/// other bytes below 0x20 as `\u00xx`; every other byte is copied.
fn write_json_string(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &b in s {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..0x20 => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// A directory's entries while it is being listed.
type Entries = BTreeMap<Box<[u8]>, ListingNode>;

/// Builds a [`NarListing`] from the validator's events.
#[derive(Debug, Default)]
pub(super) struct ListingBuilder {
    /// Open directories: the name each has in its parent (empty for the
    /// root) and the entries so far.
    open: Vec<(Box<[u8]>, Entries)>,
    /// Name of the entry whose node comes next.
    pending_name: Box<[u8]>,
    root: Option<ListingNode>,
}

impl ListingBuilder {
    /// The next node is the entry `name` of the innermost directory.
    pub(super) fn entry_name(&mut self, name: Box<[u8]>) {
        self.pending_name = name;
    }

    /// A regular file node.
    pub(super) fn regular(&mut self, executable: bool, size: u64, nar_offset: u64) {
        self.add(ListingNode::Regular {
            size,
            executable,
            nar_offset,
        });
    }

    /// A symlink node.
    pub(super) fn symlink(&mut self, target: Box<[u8]>) {
        self.add(ListingNode::Symlink { target });
    }

    /// A directory node opens.
    pub(super) fn enter_directory(&mut self) {
        let name = std::mem::take(&mut self.pending_name);
        self.open.push((name, BTreeMap::new()));
    }

    /// The innermost directory closes.
    pub(super) fn leave_directory(&mut self) {
        if let Some((name, entries)) = self.open.pop() {
            self.pending_name = name;
            self.add(ListingNode::Directory { entries });
        }
    }

    /// The listing, once the root node is complete.
    pub(super) fn finish(self) -> Option<NarListing> {
        self.root.map(|root| NarListing { root })
    }

    fn add(&mut self, node: ListingNode) {
        let name = std::mem::take(&mut self.pending_name);
        match self.open.last_mut() {
            Some((_, entries)) => {
                entries.insert(name, node);
            }
            None => self.root = Some(node),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let entries = BTreeMap::from([
            (
                Box::from(&b"bin"[..]),
                ListingNode::Directory {
                    entries: BTreeMap::from([(
                        Box::from(&b"hello"[..]),
                        ListingNode::Regular {
                            size: 38184,
                            executable: true,
                            nar_offset: 400,
                        },
                    )]),
                },
            ),
            (
                Box::from(&b"link"[..]),
                ListingNode::Symlink {
                    target: Box::from(&b"bin/hello"[..]),
                },
            ),
            (
                Box::from(&b"readme"[..]),
                ListingNode::Regular {
                    size: 0,
                    executable: false,
                    nar_offset: 1000,
                },
            ),
        ]);
        let listing = NarListing {
            root: ListingNode::Directory { entries },
        };
        assert_eq!(
            String::from_utf8(listing.to_json()).unwrap(),
            concat!(
                r#"{"version":1,"root":{"type":"directory","entries":{"#,
                r#""bin":{"type":"directory","entries":{"hello":{"type":"regular","size":38184,"executable":true,"narOffset":400}}},"#,
                r#""link":{"type":"symlink","target":"bin/hello"},"#,
                r#""readme":{"type":"regular","size":0,"narOffset":1000}}}}"#
            )
        );
    }

    #[test]
    fn empty_directory() {
        let listing = NarListing {
            root: ListingNode::Directory {
                entries: BTreeMap::new(),
            },
        };
        assert_eq!(
            listing.to_json(),
            br#"{"version":1,"root":{"type":"directory","entries":{}}}"#
        );
    }

    #[test]
    fn string_escapes_like_nix() {
        let mut out = Vec::new();
        write_json_string(&mut out, b"a\"b\\c\nd\re\tf\x01g\x1f\x7f\xc3\xa9\xff");
        assert_eq!(
            out,
            b"\"a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u001f\x7f\xc3\xa9\xff\"".to_vec()
        );
    }

    #[test]
    fn escaped_output_is_valid_json_for_utf8_names() {
        let listing = NarListing {
            root: ListingNode::Symlink {
                target: Box::from("caf\u{e9} \"quoted\"\n\u{1}".as_bytes()),
            },
        };
        let v: serde_json::Value = serde_json::from_slice(&listing.to_json()).unwrap();
        assert_eq!(v["root"]["target"], "caf\u{e9} \"quoted\"\n\u{1}");
    }
}
