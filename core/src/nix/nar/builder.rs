//! Writing NARs from an in-memory tree, for tests and tools that need
//! synthetic store paths (`nix-store --dump` without a store).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;

use super::NAR_MAGIC;

/// A file system tree to serialise as a NAR. Directory entries live in a
/// `BTreeMap`, so they are unique and in NAR order by construction; names
/// are not otherwise checked, so a test can write a NAR with a `.` entry
/// and watch [`super::NarValidator`] reject it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarNode {
    /// A regular file.
    File {
        /// Whether Nix marks it executable.
        executable: bool,
        /// Its bytes.
        contents: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Where it points.
        target: Vec<u8>,
    },
    /// A directory: entry name to node.
    Directory(BTreeMap<Vec<u8>, NarNode>),
}

impl NarNode {
    /// A non-executable regular file.
    pub fn file(contents: impl Into<Vec<u8>>) -> Self {
        Self::File {
            executable: false,
            contents: contents.into(),
        }
    }

    /// An executable regular file.
    pub fn executable(contents: impl Into<Vec<u8>>) -> Self {
        Self::File {
            executable: true,
            contents: contents.into(),
        }
    }

    /// A symlink to `target`.
    pub fn symlink(target: impl Into<Vec<u8>>) -> Self {
        Self::Symlink {
            target: target.into(),
        }
    }

    /// A directory of `(name, node)` entries.
    pub fn directory<N: Into<Vec<u8>>>(entries: impl IntoIterator<Item = (N, NarNode)>) -> Self {
        Self::Directory(
            entries
                .into_iter()
                .map(|(n, node)| (n.into(), node))
                .collect(),
        )
    }

    /// Reads a tree from the file system, as `nix-store --dump` would see it
    /// (only the executable bit of permissions is kept).
    pub fn from_fs(path: &Path) -> io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::PermissionsExt;

        let meta = std::fs::symlink_metadata(path)?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target = std::fs::read_link(path)?;
            Ok(Self::symlink(target.as_os_str().as_bytes()))
        } else if kind.is_dir() {
            let mut entries = BTreeMap::new();
            for entry in std::fs::read_dir(path)? {
                let entry = entry?;
                let node = Self::from_fs(&entry.path())?;
                entries.insert(entry.file_name().as_bytes().to_vec(), node);
            }
            Ok(Self::Directory(entries))
        } else if kind.is_file() {
            Ok(Self::File {
                executable: meta.permissions().mode() & 0o100 != 0,
                contents: std::fs::read(path)?,
            })
        } else {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{} is neither a file, a directory nor a symlink",
                    path.display()
                ),
            ))
        }
    }

    /// The NAR of this tree.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.write_to(&mut out);
        out
    }

    /// Streams the NAR of this tree to `w`.
    pub fn write_to<W: Write>(&self, w: &mut W) -> io::Result<()> {
        write_str(w, NAR_MAGIC)?;
        self.write_node(w)
    }

    fn write_node<W: Write>(&self, w: &mut W) -> io::Result<()> {
        write_str(w, b"(")?;
        write_str(w, b"type")?;
        match self {
            Self::File {
                executable,
                contents,
            } => {
                write_str(w, b"regular")?;
                if *executable {
                    write_str(w, b"executable")?;
                    write_str(w, b"")?;
                }
                write_str(w, b"contents")?;
                write_str(w, contents)?;
            }
            Self::Symlink { target } => {
                write_str(w, b"symlink")?;
                write_str(w, b"target")?;
                write_str(w, target)?;
            }
            Self::Directory(entries) => {
                write_str(w, b"directory")?;
                for (name, node) in entries {
                    write_str(w, b"entry")?;
                    write_str(w, b"(")?;
                    write_str(w, b"name")?;
                    write_str(w, name)?;
                    write_str(w, b"node")?;
                    node.write_node(w)?;
                    write_str(w, b")")?;
                }
            }
        }
        write_str(w, b")")
    }
}

/// Writes one NAR string: little-endian length, bytes, zero padding.
pub(super) fn write_str<W: Write>(w: &mut W, s: &[u8]) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s)?;
    let pad = (8 - s.len() % 8) % 8;
    w.write_all(&[0u8; 8][..pad])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nar_string(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_str(&mut out, s).unwrap();
        out
    }

    #[test]
    fn strings_are_padded() {
        assert_eq!(nar_string(b""), vec![0; 8]);
        assert_eq!(
            nar_string(b"("),
            [&[1, 0, 0, 0, 0, 0, 0, 0][..], b"(\0\0\0\0\0\0\0"].concat()
        );
        assert_eq!(nar_string(b"12345678").len(), 16);
        assert_eq!(nar_string(b"123456789").len(), 24);
    }

    #[test]
    fn single_file_bytes() {
        let expected: Vec<u8> = [
            &b"nix-archive-1"[..],
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"hi",
            b")",
        ]
        .iter()
        .flat_map(|s| nar_string(s))
        .collect();
        assert_eq!(NarNode::file(*b"hi").to_bytes(), expected);
    }

    #[test]
    fn from_fs_reads_a_tree() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b"), b"bee").unwrap();
        std::fs::write(dir.path().join("x"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(dir.path().join("x"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::os::unix::fs::symlink("../b", dir.path().join("d/l")).unwrap();
        let node = NarNode::from_fs(dir.path()).unwrap();
        assert_eq!(
            node,
            NarNode::directory([
                ("b", NarNode::file(*b"bee")),
                ("d", NarNode::directory([("l", NarNode::symlink(*b"../b"))])),
                ("x", NarNode::executable(*b"#!/bin/sh\n")),
            ])
        );
    }
}
