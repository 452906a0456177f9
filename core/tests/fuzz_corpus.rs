//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same checks the fuzz targets run, on the stable toolchain: every file
//! through the NAR validator, the narinfo parser and the content-address
//! parser.
//!
//! The seed corpus itself is written by the ignored test
//! `regenerate_seed_corpus` (`cargo test -p larder-shared --test fuzz_corpus
//! -- --ignored`), from the NAR builder and known narinfo texts.

use std::path::{Path, PathBuf};

use larder_core::nix::nar::NarNode;

#[path = "../../fuzz/src/checks.rs"]
mod checks;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

fn corpus_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for target in ["nar_validate", "narinfo_parse", "content_address_parse"] {
        let dir = corpus_dir().join(target);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            files.push(entry.expect("corpus entry").path());
        }
    }
    files.sort();
    files
}

#[test]
fn corpus_replays_without_panics() {
    let files = corpus_files();
    assert!(
        files.len() >= 20,
        "seed corpus missing: {} files",
        files.len()
    );
    for file in files {
        let data = std::fs::read(&file).expect("corpus file");
        let name = file.display().to_string();
        let outcome = std::panic::catch_unwind(|| {
            checks::nar_validate(&data);
            checks::narinfo_parse(&data);
            checks::content_address_parse(&data);
        });
        assert!(outcome.is_ok(), "{name} made a check panic");
    }
}

#[test]
fn seed_corpus_has_valid_and_invalid_inputs() {
    use larder_core::nix::content_address::ContentAddress;
    use larder_core::nix::nar::validate;
    use larder_core::nix::narinfo::NarInfo;

    let read_dir = |target: &str| -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(corpus_dir().join(target)).expect("corpus dir") {
            out.push(std::fs::read(entry.expect("entry").path()).expect("corpus file"));
        }
        out
    };
    let nars = read_dir("nar_validate");
    let valid = nars.iter().filter(|n| validate(n).is_ok()).count();
    assert!(
        valid >= 5 && nars.len() - valid >= 5,
        "{valid} of {} NARs valid",
        nars.len()
    );
    let infos = read_dir("narinfo_parse");
    let valid = infos
        .iter()
        .filter(|t| std::str::from_utf8(t).is_ok_and(|t| NarInfo::parse(t).is_ok()))
        .count();
    assert!(
        valid >= 3 && infos.len() - valid >= 3,
        "{valid} of {} narinfos valid",
        infos.len()
    );
    let cas = read_dir("content_address_parse");
    let valid = cas
        .iter()
        .filter(|t| std::str::from_utf8(t).is_ok_and(|t| t.parse::<ContentAddress>().is_ok()))
        .count();
    assert!(
        valid >= 3 && cas.len() - valid >= 3,
        "{valid} of {} content addresses valid",
        cas.len()
    );
}

const HELLO_NARINFO: &str = include_str!("fixtures/hello.narinfo");

const SOURCE_NARINFO: &str = include_str!("fixtures/source.narinfo");

const STAGED_NARINFO: &str = include_str!("fixtures/staged.narinfo");

/// Rewrites `fuzz/corpus/` from the builder and known texts. Run by hand
/// after changing the formats; the files are checked in.
#[test]
#[ignore = "writes the seed corpus into the source tree"]
fn regenerate_seed_corpus() {
    let tree = NarNode::directory([
        (
            "bin",
            NarNode::directory([(
                "hello",
                NarNode::executable(&b"#!/bin/sh\necho hello\n"[..]),
            )]),
        ),
        ("empty", NarNode::file(Vec::new())),
        ("lib", NarNode::symlink("bin")),
        (
            "share",
            NarNode::directory([(
                "doc",
                NarNode::directory([("README", NarNode::file(vec![b'r'; 100]))]),
            )]),
        ),
    ]);
    let tree_nar = tree.to_bytes();
    let unsorted = {
        // Swap the names "bin" and "lib" (same length) to break the order.
        let mut nar = tree_nar.clone();
        let at = |nar: &[u8], needle: &[u8]| {
            nar.windows(needle.len())
                .position(|w| w == needle)
                .expect("name")
        };
        let (b, l) = (at(&nar, b"bin\0"), at(&nar, b"lib\0"));
        nar[b..b + 3].copy_from_slice(b"lib");
        nar[l..l + 3].copy_from_slice(b"bin");
        nar
    };
    let mut bad_padding = NarNode::file(&b"abc"[..]).to_bytes();
    let len = bad_padding.len();
    bad_padding[len - 16 - 1] = 0xff; // last padding byte of "abc"
    let mut trailing = NarNode::file(&b"x"[..]).to_bytes();
    trailing.extend_from_slice(&[0; 8]);

    let nars: Vec<(&str, Vec<u8>)> = vec![
        ("file.nar", NarNode::file(&b"hello\n"[..]).to_bytes()),
        ("empty-file.nar", NarNode::file(Vec::new()).to_bytes()),
        (
            "executable.nar",
            NarNode::executable(&b"#!/bin/sh\n"[..]).to_bytes(),
        ),
        (
            "symlink.nar",
            NarNode::symlink("/nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10").to_bytes(),
        ),
        (
            "empty-dir.nar",
            NarNode::directory(Vec::<(&str, NarNode)>::new()).to_bytes(),
        ),
        ("tree.nar", tree_nar.clone()),
        ("truncated.nar", tree_nar[..tree_nar.len() / 2].to_vec()),
        ("bad-magic.nar", {
            let mut n = tree_nar.clone();
            n[8] = b'X';
            n
        }),
        ("unsorted.nar", unsorted),
        (
            "dotdot.nar",
            NarNode::directory([("..", NarNode::file(Vec::new()))]).to_bytes(),
        ),
        (
            "slash.nar",
            NarNode::directory([("a/b", NarNode::file(Vec::new()))]).to_bytes(),
        ),
        ("bad-padding.nar", bad_padding),
        ("trailing.nar", trailing),
        ("empty.nar", Vec::new()),
    ];
    let narinfos: Vec<(&str, String)> = vec![
        ("hello.narinfo", HELLO_NARINFO.to_owned()),
        ("source-ca.narinfo", SOURCE_NARINFO.to_owned()),
        ("staged.narinfo", STAGED_NARINFO.to_owned()),
        (
            "missing-narhash.narinfo",
            HELLO_NARINFO.replace(
                "NarHash: sha256:16mvl7v0ylzcg2n3xzjn41qhzbmgcn5iyarx16nn5l2r36n2kqci\n",
                "",
            ),
        ),
        (
            "duplicate-references.narinfo",
            format!("{SOURCE_NARINFO}References: \n"),
        ),
        (
            "no-final-newline.narinfo",
            HELLO_NARINFO.trim_end().to_owned(),
        ),
        (
            "no-space.narinfo",
            SOURCE_NARINFO.replace("References: \n", "References:\n"),
        ),
    ];

    let source_ca = "fixed:r:sha256:19rg7ddp5fsia9ai4l875yqdzcawsz5iygpwlqs4vgn9njhmrl1y";
    let abc_hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let cas: Vec<(&str, String)> = vec![
        ("source.ca", source_ca.to_owned()),
        ("text-hex.ca", format!("text:sha256:{abc_hex}")),
        (
            "flat-base64.ca",
            "fixed:sha256:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=".to_owned(),
        ),
        (
            "git-sha1.ca",
            "fixed:git:sha1:a9993e364706816aba3e25717850c26c9cd0d89d".to_owned(),
        ),
        ("not-a-ca.ca", "definitely not a CA".to_owned()),
        ("short-digest.ca", "fixed:r:sha256:abcd".to_owned()),
        (
            "text-sha1.ca",
            "text:sha1:a9993e364706816aba3e25717850c26c9cd0d89d".to_owned(),
        ),
        (
            "sri.ca",
            "fixed:r:sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=".to_owned(),
        ),
    ];
    for (dir, files) in [
        (
            "content_address_parse",
            cas.into_iter()
                .map(|(n, t)| (n, t.into_bytes()))
                .collect::<Vec<_>>(),
        ),
        ("nar_validate", nars),
        (
            "narinfo_parse",
            narinfos
                .into_iter()
                .map(|(n, t)| (n, t.into_bytes()))
                .collect(),
        ),
    ] {
        let dir = corpus_dir().join(dir);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (name, data) in files {
            std::fs::write(dir.join(name), data).expect("corpus file");
        }
    }
}
