//! `.narinfo` files, the metadata a binary cache serves per store path
//! (Nix 2.8 `libstore/nar-info.cc`: `NarInfo::NarInfo` parses,
//! `NarInfo::to_string` renders).
//!
//! A narinfo is `Key: value` lines. Nix's parser is byte-exact and fragile:
//! the value starts two bytes after the colon, so there is exactly one space
//! (an empty reference list is `References: `, space included), and every
//! line, the last too, must end in `\n`. `StorePath` is absolute,
//! `References` and `Deriver` are base names. `StorePath`, `URL`, `NarHash`
//! and a non-zero `NarSize` are required; a missing `Compression` means
//! bzip2; a second `References` or `CA` line is corrupt; unknown keys are
//! ignored. This parser is stricter where Nix would misread the text: it
//! rejects any duplicate key and any line without `: `.

use thiserror::Error;

pub use super::compression::{Compression, UnknownCompression};
use super::hash::{FileHash, HashError, NarHash};
use super::signing::fingerprint;
use super::store_path::{StoreDir, StoreDirError, StorePath, StorePathError};

/// Why a text is not a narinfo, or a [`NarInfo`] cannot be rendered.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum NarInfoError {
    /// The text does not end in `\n` (Nix drops an unterminated last line
    /// as corrupt).
    #[error("narinfo does not end with a newline")]
    MissingFinalNewline,
    /// A line that is not `Key: value`.
    #[error("narinfo line {line} is not `Key: value`")]
    MalformedLine {
        /// 1-based line number.
        line: usize,
    },
    /// A key given twice.
    #[error("narinfo has a duplicate `{key}` line ({line})")]
    DuplicateKey {
        /// The repeated key.
        key: &'static str,
        /// 1-based line number of the second occurrence.
        line: usize,
    },
    /// No `StorePath` line.
    #[error("narinfo has no StorePath")]
    MissingStorePath,
    /// No `URL` line, or an empty one.
    #[error("narinfo has no URL")]
    MissingUrl,
    /// No `NarHash` line.
    #[error("narinfo has no NarHash")]
    MissingNarHash,
    /// No `NarSize` line.
    #[error("narinfo has no NarSize")]
    MissingNarSize,
    /// `NarSize: 0`, which Nix rejects.
    #[error("narinfo NarSize is 0")]
    ZeroNarSize,
    /// A `StorePath` outside any valid store directory.
    #[error("invalid StorePath directory: {0}")]
    StoreDir(#[from] StoreDirError),
    /// A malformed store path.
    #[error("invalid {key}: {source}")]
    StorePath {
        /// `StorePath`, `References` or `Deriver`.
        key: &'static str,
        /// Why.
        source: StorePathError,
    },
    /// A malformed hash.
    #[error("invalid {key}: {source}")]
    Hash {
        /// `FileHash` or `NarHash`.
        key: &'static str,
        /// Why.
        source: HashError,
    },
    /// A size that is not a decimal `u64`.
    #[error("invalid {key} `{value}`: not a decimal 64-bit unsigned integer")]
    Integer {
        /// `FileSize` or `NarSize`.
        key: &'static str,
        /// The text found.
        value: String,
    },
    /// A `Compression` Nix does not know.
    #[error("unknown compression `{0}`")]
    UnknownCompression(String),
    /// A free-text field containing a line break (rendering it would let
    /// the value forge other lines).
    #[error("narinfo field {key} contains a line break")]
    LineBreak {
        /// The field.
        key: &'static str,
    },
}

impl From<UnknownCompression> for NarInfoError {
    fn from(e: UnknownCompression) -> Self {
        Self::UnknownCompression(e.0)
    }
}

/// Everything a narinfo says about one store path. Paths are kept without
/// their store directory, which [`NarInfo::render`] and
/// [`NarInfo::fingerprint`] take as an argument.
#[derive(Debug, Clone, PartialEq)]
pub struct NarInfo {
    /// The path described.
    pub store_path: StorePath,
    /// Where the (compressed) NAR is, relative to the cache.
    pub url: String,
    /// How the file at `url` is compressed.
    pub compression: Compression,
    /// SHA-256 of the file at `url`.
    pub file_hash: Option<FileHash>,
    /// Size of the file at `url`.
    pub file_size: Option<u64>,
    /// SHA-256 of the uncompressed NAR.
    pub nar_hash: NarHash,
    /// Size of the uncompressed NAR (never 0).
    pub nar_size: u64,
    /// Paths it refers to, itself included if it does, in rendering order.
    pub references: Vec<StorePath>,
    /// The `.drv` that built it, if known.
    pub deriver: Option<StorePath>,
    /// The platform it was built for, if recorded.
    pub system: Option<String>,
    /// Signatures `name:base64`, kept verbatim (also from unknown keys).
    pub sigs: Vec<String>,
    /// Content address (`fixed:r:sha256:…`, `text:sha256:…`), if any.
    pub ca: Option<String>,
}

/// Keys this module understands, in Nix's rendering order.
const KEYS: [&str; 12] = [
    "StorePath",
    "URL",
    "Compression",
    "FileHash",
    "FileSize",
    "NarHash",
    "NarSize",
    "References",
    "Deriver",
    "System",
    "Sig",
    "CA",
];

/// A decimal `u64` as Nix's `string2Int` reads it (no sign, no spaces).
fn parse_u64(key: &'static str, value: &str) -> Result<u64, NarInfoError> {
    let invalid = || NarInfoError::Integer {
        key,
        value: value.to_owned(),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    value.parse().map_err(|_| invalid())
}

impl NarInfo {
    /// Parses a narinfo, returning the store directory its `StorePath` is
    /// in (the cache's, normally `/nix/store`).
    pub fn parse(text: &str) -> Result<(NarInfo, StoreDir), NarInfoError> {
        let body = text
            .strip_suffix('\n')
            .ok_or(NarInfoError::MissingFinalNewline)?;
        let mut seen = [false; KEYS.len()];
        let mut store_path = None;
        let mut url = None;
        let mut compression = Compression::Bzip2;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = Vec::new();
        let mut deriver = None;
        let mut system = None;
        let mut sigs = Vec::new();
        let mut ca = None;

        for (i, raw_line) in body.split('\n').enumerate() {
            let line = i + 1;
            let (key, value) = raw_line
                .split_once(": ")
                .filter(|(k, _)| !k.is_empty() && !k.contains(':'))
                .ok_or(NarInfoError::MalformedLine { line })?;
            let Some(k) = KEYS.iter().position(|known| *known == key) else {
                continue;
            };
            let key = KEYS[k];
            if seen[k] && key != "Sig" {
                return Err(NarInfoError::DuplicateKey { key, line });
            }
            seen[k] = true;
            let path = |s: &str| {
                StorePath::from_base_name(s)
                    .map_err(|source| NarInfoError::StorePath { key, source })
            };
            let hash_err = |source| NarInfoError::Hash { key, source };
            match key {
                "StorePath" => {
                    // A relative value gives an empty, non-absolute directory.
                    let (dir, base) = value.rsplit_once('/').unwrap_or(("", value));
                    let dir: StoreDir = dir.parse()?;
                    store_path = Some((path(base)?, dir));
                }
                "URL" => url = Some(value.to_owned()).filter(|u| !u.is_empty()),
                "Compression" => compression = value.parse()?,
                "FileHash" => file_hash = Some(value.parse().map_err(hash_err)?),
                "FileSize" => file_size = Some(parse_u64(key, value)?),
                "NarHash" => nar_hash = Some(value.parse().map_err(hash_err)?),
                "NarSize" => nar_size = Some(parse_u64(key, value)?),
                "References" => {
                    references = value
                        .split(' ')
                        .filter(|r| !r.is_empty())
                        .map(path)
                        .collect::<Result<_, _>>()?;
                }
                "Deriver" if value == "unknown-deriver" => {}
                "Deriver" => deriver = Some(path(value)?),
                "System" => system = Some(value.to_owned()),
                "Sig" => sigs.push(value.to_owned()),
                "CA" => ca = Some(value.to_owned()).filter(|c| !c.is_empty()),
                _ => {}
            }
        }

        let (store_path, store_dir) = store_path.ok_or(NarInfoError::MissingStorePath)?;
        let nar_size = nar_size.ok_or(NarInfoError::MissingNarSize)?;
        if nar_size == 0 {
            return Err(NarInfoError::ZeroNarSize);
        }
        let info = NarInfo {
            store_path,
            url: url.ok_or(NarInfoError::MissingUrl)?,
            compression,
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or(NarInfoError::MissingNarHash)?,
            nar_size,
            references,
            deriver,
            system,
            sigs,
            ca,
        };
        Ok((info, store_dir))
    }

    /// Checks what the types cannot: a non-empty URL, a non-zero size, and
    /// no line breaks in free text. [`NarInfo::parse`] only returns values
    /// that pass; check values built from uploads before rendering them.
    pub fn validate(&self) -> Result<(), NarInfoError> {
        if self.url.is_empty() {
            return Err(NarInfoError::MissingUrl);
        }
        if self.nar_size == 0 {
            return Err(NarInfoError::ZeroNarSize);
        }
        let texts = [
            ("URL", Some(&self.url)),
            ("System", self.system.as_ref()),
            ("CA", self.ca.as_ref()),
        ];
        let sigs = self.sigs.iter().map(|s| ("Sig", Some(s)));
        for (key, value) in texts.into_iter().chain(sigs) {
            if value.is_some_and(|v| v.contains(['\n', '\r'])) {
                return Err(NarInfoError::LineBreak { key });
            }
        }
        Ok(())
    }

    /// The narinfo text, as Nix 2.8's `NarInfo::to_string` lays it out.
    /// Parseable by Nix if [`NarInfo::validate`] passes.
    pub fn render(&self, store_dir: &StoreDir) -> String {
        use std::fmt::Write as _;

        let mut out = String::with_capacity(512);
        // Writing to a String cannot fail.
        let _ = writeln!(out, "StorePath: {}", self.store_path.to_absolute(store_dir));
        let _ = writeln!(out, "URL: {}", self.url);
        let _ = writeln!(out, "Compression: {}", self.compression);
        if let Some(h) = &self.file_hash {
            let _ = writeln!(out, "FileHash: {h}");
        }
        if let Some(s) = self.file_size {
            let _ = writeln!(out, "FileSize: {s}");
        }
        let _ = writeln!(out, "NarHash: {}", self.nar_hash);
        let _ = writeln!(out, "NarSize: {}", self.nar_size);
        out.push_str("References: ");
        for (i, r) in self.references.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            let _ = write!(out, "{r}");
        }
        out.push('\n');
        if let Some(d) = &self.deriver {
            let _ = writeln!(out, "Deriver: {d}");
        }
        if let Some(s) = &self.system {
            let _ = writeln!(out, "System: {s}");
        }
        for sig in &self.sigs {
            let _ = writeln!(out, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(out, "CA: {ca}");
        }
        out
    }

    /// What this path's signatures sign (see [`fingerprint`]).
    pub fn fingerprint(&self, store_dir: &StoreDir) -> String {
        fingerprint(
            store_dir,
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::signing::{PublicKey, Signature};
    use proptest::prelude::*;

    /// hello-2.10 as cache.nixos.org serves it. `NarHash`, `NarSize`,
    /// `References` and `Sig` are the public vector of docs/protocol.md;
    /// `URL`, `FileHash`, `FileSize` and `Deriver` are made up in the same
    /// format (they are not signed).
    const HELLO: &str = include_str!("../../tests/fixtures/hello.narinfo");

    /// A fixed-output source path in cache.nixos.org's format: no
    /// references, a `CA` line. All values made up.
    const SOURCE: &str = include_str!("../../tests/fixtures/source.narinfo");

    /// What Larder serves for a staged upload: uncompressed, no file hash.
    const STAGED: &str = include_str!("../../tests/fixtures/staged.narinfo");

    fn parse(text: &str) -> NarInfo {
        NarInfo::parse(text).unwrap().0
    }

    fn err(text: &str) -> NarInfoError {
        NarInfo::parse(text).unwrap_err()
    }

    #[test]
    fn hello_parses_renders_and_verifies() {
        let (info, dir) = NarInfo::parse(HELLO).unwrap();
        assert_eq!(dir, StoreDir::default());
        assert_eq!(
            info.store_path.base_name(),
            "xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10"
        );
        assert_eq!(info.compression, Compression::Xz);
        assert_eq!(info.file_size, Some(41232));
        assert_eq!(info.nar_size, 206104);
        assert_eq!(info.references.len(), 2);
        assert_eq!(
            info.deriver.as_ref().unwrap().name.as_str(),
            "hello-2.10.drv"
        );
        assert_eq!(info.system, None);
        assert_eq!(info.ca, None);
        assert_eq!(info.render(&dir), HELLO);

        let key: PublicKey = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
            .parse()
            .unwrap();
        let sig: Signature = info.sigs[0].parse().unwrap();
        assert!(key.verify(&info.fingerprint(&dir), &sig));
    }

    #[test]
    fn other_real_world_shapes_round_trip() {
        for text in [SOURCE, STAGED] {
            let (info, dir) = NarInfo::parse(text).unwrap();
            assert_eq!(info.render(&dir), text);
            info.validate().unwrap();
        }
        let source = parse(SOURCE);
        assert!(source.references.is_empty());
        assert_eq!(
            source.ca.as_deref(),
            Some("fixed:r:sha256:19rg7ddp5fsia9ai4l875yqdzcawsz5iygpwlqs4vgn9njhmrl1y")
        );
        let staged = parse(STAGED);
        assert_eq!(
            (staged.compression, staged.file_hash, staged.file_size),
            (Compression::None, None, None)
        );
        assert_eq!(staged.system.as_deref(), Some("x86_64-linux"));
    }

    #[test]
    fn nix_defaults_and_tolerances() {
        // No Compression means bzip2; no References means none; unknown
        // keys and `unknown-deriver` are ignored; several Sig lines stack.
        let text = "\
StorePath: /nix/store/9abkjan7sjsf894nilln3ivp57yhpjwm-source
URL: nar/x.nar.bz2
NarHash: sha256:01kvsqjcb10fs3avcmcppbydws7hgylxhz9v8cljnccrwjd52kjr
NarSize: 1
Deriver: unknown-deriver
X-Future-Field: whatever: with colons
Sig: a:1
Sig: b:2
";
        let info = parse(text);
        assert_eq!(info.compression, Compression::Bzip2);
        assert!(info.references.is_empty() && info.deriver.is_none());
        assert_eq!(info.sigs, ["a:1", "b:2"]);
        // References separated by several spaces, as Nix's tokenizer allows.
        let spaced = STAGED.replace("References: 9abk", "References:  9abk");
        assert_eq!(parse(&spaced).references.len(), 1);
        // A hex NarHash (older tools) is accepted and re-rendered as base32.
        let hex = HELLO.replace(
            "sha256:16mvl7v0ylzcg2n3xzjn41qhzbmgcn5iyarx16nn5l2r36n2kqci",
            &format!("sha256:{}", parse(HELLO).nar_hash.to_hex()),
        );
        assert_eq!(parse(&hex).render(&StoreDir::default()), HELLO);
    }

    #[test]
    fn other_store_dir() {
        let text = STAGED.replace("/nix/store/", "/gnu/store/");
        let (info, dir) = NarInfo::parse(&text).unwrap();
        assert_eq!(dir.as_str(), "/gnu/store");
        assert_eq!(info.render(&dir), text);
        assert!(info.fingerprint(&dir).starts_with("1;/gnu/store/9abk"));
    }

    #[test]
    fn missing_required_fields() {
        let without = |key: &str| {
            HELLO
                .lines()
                .filter(|l| !l.starts_with(&format!("{key}:")))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        };
        assert_eq!(err(&without("StorePath")), NarInfoError::MissingStorePath);
        assert_eq!(err(&without("URL")), NarInfoError::MissingUrl);
        assert_eq!(err(&without("NarHash")), NarInfoError::MissingNarHash);
        assert_eq!(err(&without("NarSize")), NarInfoError::MissingNarSize);
        assert_eq!(
            err(&HELLO.replace(
                "URL: nar/10a83a91g1r50bdw8g4hn47m7j7m6angpabwc80l9c16nx11cw9d.nar.xz",
                "URL: "
            )),
            NarInfoError::MissingUrl
        );
        assert_eq!(
            err(&HELLO.replace("NarSize: 206104", "NarSize: 0")),
            NarInfoError::ZeroNarSize
        );
        for key in [
            "Compression",
            "FileHash",
            "FileSize",
            "References",
            "Deriver",
            "Sig",
        ] {
            assert!(NarInfo::parse(&without(key)).is_ok(), "{key} is optional");
        }
    }

    #[test]
    fn duplicates_are_errors() {
        for (key, line) in [
            ("References", "References: \n"),
            (
                "CA",
                "CA: fixed:r:sha256:19rg7ddp5fsia9ai4l875yqdzcawsz5iygpwlqs4vgn9njhmrl1y\n",
            ),
            (
                "StorePath",
                "StorePath: /nix/store/xcp9cav49dmsjbwdjlmkjxj10gkpx553-hello-2.10\n",
            ),
            (
                "NarHash",
                "NarHash: sha256:16mvl7v0ylzcg2n3xzjn41qhzbmgcn5iyarx16nn5l2r36n2kqci\n",
            ),
            ("URL", "URL: nar/other.nar\n"),
        ] {
            let text = format!("{SOURCE}{line}");
            assert_eq!(
                err(&text),
                NarInfoError::DuplicateKey { key, line: 12 },
                "{key}"
            );
        }
    }

    #[test]
    fn line_syntax() {
        assert_eq!(err(HELLO.trim_end()), NarInfoError::MissingFinalNewline);
        assert_eq!(err(""), NarInfoError::MissingFinalNewline);
        assert_eq!(err("\n"), NarInfoError::MalformedLine { line: 1 });
        assert_eq!(
            err(&format!("{HELLO}\n")),
            NarInfoError::MalformedLine { line: 11 }
        );
        // Nix reads the value from two bytes after the colon.
        assert_eq!(
            err(&HELLO.replace("URL: ", "URL:")),
            NarInfoError::MalformedLine { line: 2 }
        );
        assert_eq!(
            err(&SOURCE.replace("References: \n", "References:\n")),
            NarInfoError::MalformedLine { line: 8 }
        );
        assert_eq!(
            err(&HELLO.replace("URL: ", ": ")),
            NarInfoError::MalformedLine { line: 2 }
        );
        assert_eq!(
            err(&HELLO.replace("URL: ", "UR:L: ")),
            NarInfoError::MalformedLine { line: 2 }
        );
    }

    #[test]
    fn bad_values() {
        assert!(matches!(
            err(&HELLO.replace("NarHash: sha256:16", "NarHash: sha256:e6")),
            NarInfoError::Hash { key: "NarHash", .. }
        ));
        assert!(matches!(
            err(&HELLO.replace("FileHash: sha256:", "FileHash: md5:")),
            NarInfoError::Hash {
                key: "FileHash",
                ..
            }
        ));
        for bad in ["+5", "-1", "", " 5", "5 ", "0x10", "18446744073709551616"] {
            assert_eq!(
                err(&HELLO.replace("FileSize: 41232", &format!("FileSize: {bad}"))),
                NarInfoError::Integer {
                    key: "FileSize",
                    value: bad.to_owned()
                },
                "{bad:?}"
            );
        }
        assert_eq!(
            err(&HELLO.replace("Compression: xz", "Compression: rar")),
            NarInfoError::UnknownCompression("rar".into())
        );
        assert!(matches!(
            err(&HELLO.replace("StorePath: /nix/store/", "StorePath: ")),
            NarInfoError::StoreDir(StoreDirError::NotAbsolute(_))
        ));
        assert!(matches!(
            err(&HELLO.replace("StorePath: /nix/store/", "StorePath: /nix//store/")),
            NarInfoError::StoreDir(StoreDirError::NotCanonical(_))
        ));
        assert!(matches!(
            err(&HELLO.replace("-hello-2.10\nURL", "-hello 2.10\nURL")),
            NarInfoError::StorePath {
                key: "StorePath",
                ..
            }
        ));
        // Absolute paths where base names belong.
        assert!(matches!(
            err(&HELLO.replace("Deriver: ", "Deriver: /nix/store/")),
            NarInfoError::StorePath { key: "Deriver", .. }
        ));
        assert!(matches!(
            err(&HELLO.replace("References: ", "References: /nix/store/")),
            NarInfoError::StorePath {
                key: "References",
                ..
            }
        ));
    }

    #[test]
    fn validate_rejects_line_breaks() {
        let mut info = parse(HELLO);
        info.validate().unwrap();
        info.system = Some("x86_64-linux\nStorePath: /nix/store/evil".into());
        assert_eq!(
            info.validate(),
            Err(NarInfoError::LineBreak { key: "System" })
        );
        let mut info = parse(HELLO);
        info.sigs.push("k:sig\r".into());
        assert_eq!(info.validate(), Err(NarInfoError::LineBreak { key: "Sig" }));
        let mut info = parse(HELLO);
        info.url.clear();
        assert_eq!(info.validate(), Err(NarInfoError::MissingUrl));
    }

    #[test]
    fn compression_names() {
        for c in Compression::ALL {
            assert_eq!(c.as_str().parse::<Compression>().unwrap(), c);
            assert_eq!(c.to_string(), c.as_str());
        }
        assert_eq!("br".parse::<Compression>().unwrap(), Compression::Brotli);
        assert_eq!(Compression::Zstd.file_extension(), ".zst");
        assert_eq!(Compression::Gzip.file_extension(), "");
        assert_eq!(Compression::Bzip2.file_extension(), ".bz2");
        assert!("Zstd".parse::<Compression>().is_err());
    }

    fn arb_path() -> impl Strategy<Value = StorePath> {
        (any::<[u8; 20]>(), "[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]{0,30}").prop_map(|(digest, name)| {
            StorePath::from_base_name(&format!("{}-{name}", crate::nix::base32::encode(&digest)))
                .expect("valid path")
        })
    }

    fn arb_narinfo() -> impl Strategy<Value = NarInfo> {
        let text = "[ -~]{0,40}";
        (
            (
                arb_path(),
                "[!-~][ -~]{0,40}",
                proptest::sample::select(&Compression::ALL[..]),
            ),
            (
                proptest::option::of(any::<[u8; 32]>()),
                proptest::option::of(any::<u64>()),
            ),
            (any::<[u8; 32]>(), 1..=u64::MAX),
            (
                proptest::collection::vec(arb_path(), 0..5),
                proptest::option::of(arb_path()),
            ),
            (
                proptest::option::of(text),
                proptest::collection::vec(text, 0..3),
                proptest::option::of("[!-~][ -~]{0,40}"),
            ),
        )
            .prop_map(
                |(
                    (store_path, url, compression),
                    (file_hash, file_size),
                    (nar_hash, nar_size),
                    (references, deriver),
                    (system, sigs, ca),
                )| NarInfo {
                    store_path,
                    url,
                    compression,
                    file_hash: file_hash.map(FileHash::from_bytes),
                    file_size,
                    nar_hash: NarHash::from_bytes(nar_hash),
                    nar_size,
                    references,
                    deriver,
                    system,
                    sigs,
                    ca,
                },
            )
    }

    proptest! {
        #[test]
        fn render_parse_round_trip(info in arb_narinfo(), dir in "(/[a-z0-9 ._-]{1,8}){1,3}") {
            let dir: StoreDir = dir.parse().unwrap_or_default();
            prop_assert!(info.validate().is_ok());
            let text = info.render(&dir);
            let (back, back_dir) = NarInfo::parse(&text).unwrap();
            prop_assert_eq!(back_dir, dir);
            prop_assert_eq!(back, info);
        }

        #[test]
        fn parse_never_panics(text in "([A-Za-z]{0,12}(: )?[ -~]{0,60}\n){0,14}") {
            if let Ok((info, dir)) = NarInfo::parse(&text) {
                prop_assert_eq!(NarInfo::parse(&info.render(&dir)).unwrap().0, info);
            }
        }
    }
}
