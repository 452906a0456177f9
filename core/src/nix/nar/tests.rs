//! Tests of the NAR module as a whole: builder → validator round trips,
//! every malformed case, arbitrary split points, and real `nix-store --dump`
//! output when Nix is installed.

use proptest::prelude::*;

use super::builder::write_str;
use super::*;

/// Concatenates NAR strings.
fn raw(tokens: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in tokens {
        write_str(&mut out, t).unwrap();
    }
    out
}

/// Offset of `tokens[i]` in `raw(tokens)`.
fn offset_of(tokens: &[&[u8]], i: usize) -> u64 {
    raw(&tokens[..i]).len() as u64
}

/// Feeds `nar` in pieces whose sizes cycle through `splits`.
fn feed(mut v: NarValidator, nar: &[u8], splits: &[usize]) -> Result<NarSummary, NarError> {
    let mut rest = nar;
    for &n in splits.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(n.clamp(1, rest.len()));
        v.update(piece)?;
        rest = tail;
    }
    v.finish()
}

fn err_of(nar: &[u8]) -> NarError {
    validate(nar).unwrap_err()
}

const HEAD: [&[u8]; 4] = [b"nix-archive-1", b"(", b"type", b"directory"];

/// A root directory whose entries are `(name, file contents)`.
fn dir_tokens<'a>(names: &[&'a [u8]]) -> Vec<&'a [u8]> {
    let mut t: Vec<&[u8]> = HEAD.to_vec();
    for name in names {
        t.extend([
            &b"entry"[..],
            b"(",
            b"name",
            name,
            b"node",
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"x",
            b")",
            b")",
        ]);
    }
    t.push(b")");
    t
}

fn sample_tree() -> NarNode {
    NarNode::directory([
        (
            "bin",
            NarNode::directory([("hello", NarNode::executable(vec![0x7f; 100]))]),
        ),
        ("empty", NarNode::file(Vec::new())),
        (
            "empty-dir",
            NarNode::directory(Vec::<(&str, NarNode)>::new()),
        ),
        ("lib", NarNode::symlink("bin")),
        (
            "share",
            NarNode::directory([("doc", NarNode::file(*b"eight by"))]),
        ),
    ])
}

/// Counts what a summary should report for `node`.
fn expected_summary(node: &NarNode, s: &mut NarSummary) {
    match node {
        NarNode::File {
            executable,
            contents,
        } => {
            s.regular_files += 1;
            s.executable_files += u64::from(*executable);
            s.contents_size += contents.len() as u64;
        }
        NarNode::Symlink { .. } => s.symlinks += 1,
        NarNode::Directory(entries) => {
            s.directories += 1;
            entries.values().for_each(|n| expected_summary(n, s));
        }
    }
}

/// Checks a listing against the tree it came from, file contents included
/// (through `narOffset` into the NAR).
fn check_listing(node: &NarNode, listing: &ListingNode, nar: &[u8]) {
    match (node, listing) {
        (
            NarNode::File {
                executable,
                contents,
            },
            ListingNode::Regular {
                size,
                executable: x,
                nar_offset,
            },
        ) => {
            assert_eq!(executable, x);
            assert_eq!(*size, contents.len() as u64);
            let start = *nar_offset as usize;
            assert_eq!(&nar[start..start + contents.len()], &contents[..]);
        }
        (NarNode::Symlink { target }, ListingNode::Symlink { target: t }) => {
            assert_eq!(&target[..], &t[..])
        }
        (NarNode::Directory(entries), ListingNode::Directory { entries: e }) => {
            assert_eq!(entries.len(), e.len());
            for ((n1, c1), (n2, c2)) in entries.iter().zip(e) {
                assert_eq!(&n1[..], &n2[..]);
                check_listing(c1, c2, nar);
            }
        }
        (a, b) => panic!("{a:?} listed as {b:?}"),
    }
}

fn round_trip(tree: &NarNode, splits: &[usize]) {
    let nar = tree.to_bytes();
    let summary = feed(NarValidator::with_listing(), &nar, splits).unwrap();
    let mut expected = NarSummary::default();
    expected_summary(tree, &mut expected);
    expected.nar_size = nar.len() as u64;
    let listing = summary.listing.clone().unwrap();
    check_listing(tree, &listing.root, &nar);
    expected.listing = Some(listing);
    assert_eq!(summary, expected);
}

#[test]
fn round_trips_shapes() {
    let shapes = [
        NarNode::file(Vec::new()),
        NarNode::file(*b"hello\n"),
        NarNode::executable(*b"12345678"),
        NarNode::symlink("/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10"),
        NarNode::directory(Vec::<(&str, NarNode)>::new()),
        sample_tree(),
    ];
    for tree in &shapes {
        round_trip(tree, &[usize::MAX]);
        round_trip(tree, &[1]);
        round_trip(tree, &[3, 7, 8, 13]);
    }
}

#[test]
fn summary_of_sample() {
    let nar = sample_tree().to_bytes();
    let s = validate(&nar).unwrap();
    assert_eq!(
        (
            s.regular_files,
            s.executable_files,
            s.directories,
            s.symlinks,
            s.contents_size
        ),
        (3, 1, 4, 1, 108)
    );
    assert_eq!(s.nar_size, nar.len() as u64);
    assert!(s.listing.is_none());
    let (_, listing) = list(&nar).unwrap();
    let json = String::from_utf8(listing.to_json()).unwrap();
    assert!(json.starts_with(r#"{"version":1,"root":{"type":"directory","entries":{"bin":"#));
    assert!(json.contains(r#""empty-dir":{"type":"directory","entries":{}}"#));
    assert!(json.contains(r#""lib":{"type":"symlink","target":"bin"}"#));
}

#[test]
fn large_file_is_streamed() {
    let contents = vec![0xabu8; 3 << 20];
    let nar = NarNode::file(contents).to_bytes();
    let s = feed(NarValidator::new(), &nar, &[65536, 1, 4095]).unwrap();
    assert_eq!(s.contents_size, 3 << 20);
}

#[test]
fn huge_declared_contents_allocate_nothing() {
    let mut nar = raw(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]);
    nar.extend_from_slice(&(1u64 << 60).to_le_bytes());
    nar.extend_from_slice(&[0; 1024]);
    let mut v = NarValidator::new();
    v.update(&nar).unwrap();
    assert_eq!(v.bytes_seen(), nar.len() as u64);
    assert_eq!(
        v.finish(),
        Err(NarError::Truncated {
            offset: nar.len() as u64,
            expected: "`)`"
        })
    );
}

#[test]
fn hostile_lengths_do_not_overflow() {
    let mut nar = raw(&[
        b"nix-archive-1",
        b"(",
        b"type",
        b"directory",
        b"entry",
        b"(",
        b"name",
        b"a",
        b"node",
        b"(",
        b"type",
        b"regular",
        b"contents",
        b"x",
        b")",
        b")",
        b"entry",
        b"(",
        b"name",
        b"b",
        b"node",
        b"(",
        b"type",
        b"regular",
        b"contents",
    ]);
    nar.extend_from_slice(&u64::MAX.to_le_bytes());
    nar.extend_from_slice(b"data");
    let mut v = NarValidator::with_listing();
    v.update(&nar).unwrap();
    assert!(matches!(v.finish(), Err(NarError::Truncated { .. })));
}

#[test]
fn bad_magic() {
    assert_eq!(
        err_of(&raw(&[b"nix-archive-2", b"("])),
        NarError::BadMagic { offset: 0 }
    );
    assert_eq!(err_of(&raw(&[b""])), NarError::BadMagic { offset: 0 });
    assert_eq!(
        err_of(&u64::MAX.to_le_bytes()),
        NarError::BadMagic { offset: 0 }
    );
    assert_eq!(
        err_of(b"not a nar at all"),
        NarError::BadMagic { offset: 0 }
    );
    assert_eq!(
        err_of(b""),
        NarError::Truncated {
            offset: 0,
            expected: "`nix-archive-1`"
        }
    );
}

#[test]
fn unexpected_tokens() {
    let cases: [(&[&[u8]], usize, &str); 7] = [
        (&[b"nix-archive-1", b"type"], 1, "`(`"),
        (
            &[b"nix-archive-1", b"(", b"type", b"fifo"],
            3,
            "`regular`, `symlink` or `directory`",
        ),
        (&[b"nix-archive-1", b"(", b"kind"], 2, "`type`"),
        (
            &[
                b"nix-archive-1",
                b"(",
                b"type",
                b"regular",
                b"executable",
                b"x",
            ],
            5,
            "an empty string",
        ),
        (
            &[
                b"nix-archive-1",
                b"(",
                b"type",
                b"regular",
                b"contents",
                b"",
                b"executable",
            ],
            6,
            "`)`",
        ),
        (
            &[b"nix-archive-1", b"(", b"type", b"symlink", b"contents"],
            4,
            "`target`",
        ),
        (
            &[b"nix-archive-1", b"(", b"type", b"directory", b"node"],
            4,
            "`entry` or `)`",
        ),
    ];
    for (tokens, i, expected) in cases {
        assert_eq!(
            err_of(&raw(tokens)),
            NarError::UnexpectedToken {
                offset: offset_of(tokens, i),
                expected,
                found: tokens[i].into(),
            },
            "{expected}"
        );
    }
}

#[test]
fn token_too_long() {
    let mut nar = raw(&[b"nix-archive-1"]);
    nar.extend_from_slice(&(1u64 << 40).to_le_bytes());
    assert_eq!(
        err_of(&nar),
        NarError::TokenTooLong {
            offset: 24,
            len: 1 << 40,
            expected: "`(`"
        }
    );
}

#[test]
fn non_zero_padding() {
    let mut nar = raw(&[
        b"nix-archive-1",
        b"(",
        b"type",
        b"regular",
        b"contents",
        b"abc",
        b")",
    ]);
    let contents_pad = offset_of(
        &[b"nix-archive-1", b"(", b"type", b"regular", b"contents"],
        5,
    ) + 8
        + 3;
    nar[contents_pad as usize + 2] = 1;
    assert_eq!(
        err_of(&nar),
        NarError::NonZeroPadding {
            offset: contents_pad + 2
        }
    );

    let mut nar = sample_tree().to_bytes();
    // Padding of "nix-archive-1": bytes 8+13..16.
    nar[23] = b' ';
    assert_eq!(err_of(&nar), NarError::NonZeroPadding { offset: 23 });
}

#[test]
fn entry_names() {
    let ok = dir_tokens(&[b"a", b"b", b"\xff"]);
    assert!(validate(&raw(&ok)).is_ok());

    let bad: [(&[u8], BadName); 6] = [
        (b"", BadName::Empty),
        (b".", BadName::DotOrDotDot),
        (b"..", BadName::DotOrDotDot),
        (b"a/b", BadName::Slash),
        (b"/", BadName::Slash),
        (b"a\0b", BadName::Nul),
    ];
    for (name, problem) in bad {
        let tokens = dir_tokens(&[name]);
        assert_eq!(
            err_of(&raw(&tokens)),
            NarError::InvalidName {
                offset: offset_of(&tokens, 7),
                name: name.into(),
                problem,
            },
            "{problem}"
        );
    }

    let long = [b'n'; MAX_NAME_LEN + 1];
    assert!(validate(&raw(&dir_tokens(&[&long[..MAX_NAME_LEN]]))).is_ok());
    let tokens = dir_tokens(&[&long]);
    assert_eq!(
        err_of(&raw(&tokens)),
        NarError::NameTooLong {
            offset: offset_of(&tokens, 7),
            len: 256
        }
    );
}

#[test]
fn entry_order() {
    let tokens = dir_tokens(&[b"b", b"a"]);
    assert_eq!(
        err_of(&raw(&tokens)),
        NarError::UnsortedNames {
            offset: offset_of(&tokens, 19),
            name: (*b"a").into(),
            previous: (*b"b").into(),
        }
    );
    let tokens = dir_tokens(&[b"a", b"a"]);
    assert_eq!(
        err_of(&raw(&tokens)),
        NarError::DuplicateName {
            offset: offset_of(&tokens, 19),
            name: (*b"a").into(),
        }
    );
    // Byte order, not locale order: "B" < "a", "a" < "ab" < "b".
    assert!(validate(&raw(&dir_tokens(&[b"B", b"a", b"ab", b"b"]))).is_ok());
    // Order is per directory: a subdirectory starts afresh.
    let nested = NarNode::directory([
        ("m", NarNode::directory([("a", NarNode::file(*b""))])),
        ("n", NarNode::file(*b"")),
    ]);
    assert!(validate(&nested.to_bytes()).is_ok());
}

#[test]
fn symlink_targets() {
    let target = vec![b't'; MAX_TARGET_LEN + 1];
    assert!(validate(&NarNode::symlink(&target[..MAX_TARGET_LEN]).to_bytes()).is_ok());
    assert_eq!(
        err_of(&NarNode::symlink(target).to_bytes()),
        NarError::TargetTooLong {
            offset: 88,
            len: 4096
        }
    );
    assert_eq!(
        err_of(&NarNode::symlink("").to_bytes()),
        NarError::InvalidTarget { offset: 88 }
    );
    assert_eq!(
        err_of(&NarNode::symlink("a\0b").to_bytes()),
        NarError::InvalidTarget { offset: 88 }
    );
}

#[test]
fn depth_limit() {
    let nest = |depth: usize| {
        (1..depth).fold(NarNode::directory([("f", NarNode::file(*b""))]), |n, _| {
            NarNode::directory([("d", n)])
        })
    };
    let ok = nest(MAX_DEPTH).to_bytes();
    assert_eq!(validate(&ok).unwrap().directories, MAX_DEPTH as u64);
    let nar = nest(MAX_DEPTH + 1).to_bytes();
    let e = err_of(&nar);
    assert!(matches!(e, NarError::TooDeep { .. }), "{e:?}");
    // The offending `directory` keyword is a NAR string.
    assert_eq!(&nar[e.offset() as usize + 8..][..9], b"directory");
}

#[test]
fn trailing_data() {
    let nar = sample_tree().to_bytes();
    let len = nar.len() as u64;
    let mut extra = nar.clone();
    extra.push(0);
    assert_eq!(err_of(&extra), NarError::TrailingData { offset: len });
    let mut v = NarValidator::new();
    v.update(&nar).unwrap();
    assert_eq!(v.update(b"x"), Err(NarError::TrailingData { offset: len }));
    // Two NARs back to back.
    assert_eq!(
        err_of(&[nar.clone(), nar].concat()),
        NarError::TrailingData { offset: len }
    );
}

#[test]
fn every_prefix_is_truncated() {
    let nar = sample_tree().to_bytes();
    for cut in 0..nar.len() {
        let mut v = NarValidator::new();
        v.update(&nar[..cut]).unwrap();
        let e = v.finish().unwrap_err();
        assert!(matches!(e, NarError::Truncated { .. }), "{cut}: {e:?}");
        assert_eq!(e.offset(), cut as u64);
    }
}

#[test]
fn errors_poison_the_validator() {
    let mut v = NarValidator::new();
    let e = v.update(b"\x01\0\0\0\0\0\0\0x\0\0\0\0\0\0\0").unwrap_err();
    assert_eq!(e, NarError::BadMagic { offset: 0 });
    assert_eq!(v.update(&sample_tree().to_bytes()), Err(e.clone()));
    assert_eq!(v.finish(), Err(e));
}

#[test]
fn error_messages_name_the_offset() {
    let tokens = dir_tokens(&[b"b", b"a"]);
    let msg = err_of(&raw(&tokens)).to_string();
    assert!(msg.contains(&offset_of(&tokens, 19).to_string()), "{msg}");
    assert!(msg.contains("`a`") && msg.contains("`b`"), "{msg}");
}

/// Real `nix-store --dump` output (Nix works on arbitrary paths without a
/// store). Skipped when Nix is not installed.
#[test]
fn real_nix_store_dump() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("share/empty")).unwrap();
    std::fs::write(root.join("bin/hello"), b"#!/bin/sh\necho hello\n").unwrap();
    std::fs::set_permissions(
        root.join("bin/hello"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(root.join("README"), vec![b'r'; 1000]).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(root.join("caf\u{e9} \"q\""), b"x").unwrap();
    std::os::unix::fs::symlink("bin/hello", root.join("link")).unwrap();

    let Ok(out) = Command::new("nix-store").arg("--dump").arg(&root).output() else {
        eprintln!("nix-store not on PATH: skipping");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nar = out.stdout;
    assert_eq!(nar, NarNode::from_fs(&root).unwrap().to_bytes());
    let (summary, listing) = list(&nar).unwrap();
    assert_eq!(
        (summary.regular_files, summary.directories, summary.symlinks),
        (4, 4, 1)
    );

    // `nix nar ls --json -R` prints the root node exactly as `.ls` holds it.
    let nar_file = dir.path().join("root.nar");
    std::fs::write(&nar_file, &nar).unwrap();
    let ls = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "nar",
            "ls",
            "--json",
            "-R",
        ])
        .arg(&nar_file)
        .arg("")
        .output();
    match ls {
        Ok(ls) if ls.status.success() => assert_eq!(
            String::from_utf8_lossy(&listing.root.to_json()),
            String::from_utf8_lossy(&ls.stdout).trim_end()
        ),
        _ => eprintln!("`nix nar ls` unavailable: listing not compared"),
    }
}

fn arb_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-zA-Z0-9._+-]{1,12}".prop_map(String::into_bytes),
        proptest::collection::vec(
            any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
            1..6
        ),
    ]
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn arb_tree() -> impl Strategy<Value = NarNode> {
    let leaf = prop_oneof![
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(
            |(executable, contents)| NarNode::File {
                executable,
                contents
            }
        ),
        proptest::collection::vec(1..=255u8, 1..20).prop_map(|target| NarNode::Symlink { target }),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        proptest::collection::btree_map(arb_name(), inner, 0..6).prop_map(NarNode::Directory)
    })
}

proptest! {
    #[test]
    fn random_trees_round_trip(tree in arb_tree(), splits in proptest::collection::vec(1usize..40, 1..20)) {
        round_trip(&tree, &splits);
    }

    #[test]
    fn corrupted_nars_never_panic(
        tree in arb_tree(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        splits in proptest::collection::vec(1usize..40, 1..8),
    ) {
        let mut nar = tree.to_bytes();
        for (i, b) in flips {
            let at = i.index(nar.len());
            nar[at] = b;
        }
        if let Err(e) = feed(NarValidator::with_listing(), &nar, &splits) {
            prop_assert!(e.offset() <= nar.len() as u64);
        }
    }

    #[test]
    fn same_verdict_whatever_the_splits(bytes in proptest::collection::vec(any::<u8>(), 0..200), splits in proptest::collection::vec(1usize..20, 1..8)) {
        let whole = validate(&bytes);
        prop_assert_eq!(feed(NarValidator::new(), &bytes, &splits), whole);
    }
}

#[test]
fn listing_of_single_file_root() {
    let nar = NarNode::executable(*b"abc").to_bytes();
    let (_, listing) = list(&nar).unwrap();
    assert_eq!(
        listing,
        NarListing {
            root: ListingNode::Regular {
                size: 3,
                executable: true,
                nar_offset: 128
            }
        }
    );
    assert_eq!(&nar[128..131], b"abc");
    assert_eq!(
        listing.to_json(),
        br#"{"version":1,"root":{"type":"regular","size":3,"executable":true,"narOffset":128}}"#
    );
}
