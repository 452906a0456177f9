//! Content addresses: the narinfo `CA` field and Attic's `ca`, as Nix's
//! `ContentAddress::parse` (`libstore/content-address.cc`) accepts them.
//!
//! Grammar: `text:<algo>:<hash>` (`text` is always `sha256`), or
//! `fixed:[r:|git:]<algo>:<hash>`, where `r:` is a NAR serialisation and
//! `git:` a Git tree/blob hash (newer Nix, experimental). `<algo>` is one of
//! `md5`, `sha1`, `sha256`, `sha512`, `blake3`; `<hash>` is unprefixed and
//! told by its length: base16, nix-base32 or base64 of the algorithm's digest
//! size (`Hash::parseNonSRIUnprefixed`). A path whose CA Nix cannot parse is
//! refused by every client ("not a content address"), so a binary cache
//! must refuse it at upload. [`fmt::Display`] writes Nix's canonical form
//! (nix-base32 digest), which parses back to the same value.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use thiserror::Error;

use super::base32;

/// Why a string is not a content address.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ContentAddressError {
    /// Neither `text:` nor `fixed:`.
    #[error("content address must start with `text:` or `fixed:`")]
    UnknownPrefix,
    /// No `:` after the algorithm.
    #[error("content address must be `<method>:<algo>:<hash>`")]
    MissingAlgorithm,
    /// An algorithm Nix does not know.
    #[error("unknown hash algorithm {0:?}")]
    UnknownAlgorithm(String),
    /// `text:` with another algorithm than sha256.
    #[error("a text content address uses sha256, not {0}")]
    TextNotSha256(HashAlgo),
    /// A digest whose length fits no encoding of the algorithm.
    #[error("a {algo} digest of {len} characters is neither base16, nix-base32 nor base64")]
    DigestLength {
        /// The algorithm.
        algo: HashAlgo,
        /// Characters given.
        len: usize,
    },
    /// A digest of the right length that does not decode.
    #[error("invalid {algo} digest: {reason}")]
    Digest {
        /// The algorithm.
        algo: HashAlgo,
        /// What the decoder said.
        reason: String,
    },
}

/// Hash algorithms Nix names in content addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgo {
    /// MD5 (16 bytes).
    Md5,
    /// SHA-1 (20 bytes).
    Sha1,
    /// SHA-256 (32 bytes).
    Sha256,
    /// SHA-512 (64 bytes).
    Sha512,
    /// BLAKE3 (32 bytes; newer Nix, experimental).
    Blake3,
}

impl HashAlgo {
    /// Every algorithm, for parsing.
    const ALL: [HashAlgo; 5] = [
        HashAlgo::Md5,
        HashAlgo::Sha1,
        HashAlgo::Sha256,
        HashAlgo::Sha512,
        HashAlgo::Blake3,
    ];

    /// Nix's name for it.
    pub const fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
            HashAlgo::Blake3 => "blake3",
        }
    }

    /// Digest size in bytes.
    pub const fn size(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 | HashAlgo::Blake3 => 32,
            HashAlgo::Sha512 => 64,
        }
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the content was hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaMethod {
    /// `text:`: a flat file with references (derivations, `builtins.toFile`).
    Text,
    /// `fixed:`: a flat file's bytes.
    Flat,
    /// `fixed:r:`: the NAR serialisation.
    NixArchive,
    /// `fixed:git:`: a Git object hash.
    Git,
}

impl CaMethod {
    /// The prefix before `<algo>:`.
    const fn prefix(self) -> &'static str {
        match self {
            CaMethod::Text => "text:",
            CaMethod::Flat => "fixed:",
            CaMethod::NixArchive => "fixed:r:",
            CaMethod::Git => "fixed:git:",
        }
    }
}

/// A parsed content address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContentAddress {
    method: CaMethod,
    algo: HashAlgo,
    digest: Vec<u8>,
}

impl ContentAddress {
    /// How the content was hashed.
    pub fn method(&self) -> CaMethod {
        self.method
    }

    /// The hash algorithm.
    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// The digest, [`HashAlgo::size`] bytes.
    pub fn digest(&self) -> &[u8] {
        &self.digest
    }
}

/// Decodes an unprefixed digest, telling the encoding by its length.
fn parse_digest(algo: HashAlgo, s: &str) -> Result<Vec<u8>, ContentAddressError> {
    let size = algo.size();
    let bad = |reason: String| ContentAddressError::Digest { algo, reason };
    let digest = if s.len() == 2 * size {
        hex::decode(s).map_err(|e| bad(e.to_string()))?
    } else if s.len() == base32::encoded_len(size) {
        base32::decode(s).map_err(|e| bad(e.to_string()))?
    } else if s.len() == size.div_ceil(3) * 4 {
        BASE64.decode(s).map_err(|e| bad(e.to_string()))?
    } else {
        return Err(ContentAddressError::DigestLength { algo, len: s.len() });
    };
    if digest.len() != size {
        return Err(bad(format!("{} bytes, expected {size}", digest.len())));
    }
    Ok(digest)
}

impl FromStr for ContentAddress {
    type Err = ContentAddressError;

    fn from_str(s: &str) -> Result<Self, ContentAddressError> {
        let (method, rest) = if let Some(rest) = s.strip_prefix("text:") {
            (CaMethod::Text, rest)
        } else if let Some(rest) = s.strip_prefix("fixed:") {
            if let Some(rest) = rest.strip_prefix("r:") {
                (CaMethod::NixArchive, rest)
            } else if let Some(rest) = rest.strip_prefix("git:") {
                (CaMethod::Git, rest)
            } else {
                (CaMethod::Flat, rest)
            }
        } else {
            return Err(ContentAddressError::UnknownPrefix);
        };
        let (name, digest) = rest
            .split_once(':')
            .ok_or(ContentAddressError::MissingAlgorithm)?;
        let algo = HashAlgo::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| ContentAddressError::UnknownAlgorithm(name.to_owned()))?;
        if method == CaMethod::Text && algo != HashAlgo::Sha256 {
            return Err(ContentAddressError::TextNotSha256(algo));
        }
        let digest = parse_digest(algo, digest)?;
        Ok(Self {
            method,
            algo,
            digest,
        })
    }
}

/// Nix's rendering: `<prefix><algo>:<nix-base32 digest>`.
impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}:{}",
            self.method.prefix(),
            self.algo,
            base32::encode(&self.digest)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The `CA` of a source path as cache.nixos.org serves it.
    const SOURCE: &str = "fixed:r:sha256:19rg7ddp5fsia9ai4l875yqdzcawsz5iygpwlqs4vgn9njhmrl1y";
    const ABC_SHA256_HEX: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const ABC_SHA256_B32: &str = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";
    const ABC_SHA256_B64: &str = "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=";

    #[test]
    fn real_source_path_round_trips() {
        let ca: ContentAddress = SOURCE.parse().unwrap();
        assert_eq!(ca.method(), CaMethod::NixArchive);
        assert_eq!(ca.algo(), HashAlgo::Sha256);
        assert_eq!(ca.digest().len(), 32);
        assert_eq!(ca.to_string(), SOURCE);
    }

    #[test]
    fn every_encoding_of_a_digest_is_the_same_address() {
        let canonical = format!("text:sha256:{ABC_SHA256_B32}");
        for digest in [ABC_SHA256_HEX, ABC_SHA256_B32, ABC_SHA256_B64] {
            let ca: ContentAddress = format!("text:sha256:{digest}").parse().unwrap();
            assert_eq!(ca.to_string(), canonical, "{digest}");
        }
    }

    #[test]
    fn every_method_and_algorithm() {
        for (s, method, algo) in [
            ("fixed:md5:", CaMethod::Flat, HashAlgo::Md5),
            ("fixed:r:sha1:", CaMethod::NixArchive, HashAlgo::Sha1),
            ("fixed:git:sha1:", CaMethod::Git, HashAlgo::Sha1),
            ("fixed:sha512:", CaMethod::Flat, HashAlgo::Sha512),
            ("fixed:r:blake3:", CaMethod::NixArchive, HashAlgo::Blake3),
            ("text:sha256:", CaMethod::Text, HashAlgo::Sha256),
        ] {
            let digest = vec![0xa5; algo.size()];
            for enc in [
                hex::encode(&digest),
                base32::encode(&digest),
                BASE64.encode(&digest),
            ] {
                let ca: ContentAddress = format!("{s}{enc}").parse().unwrap();
                assert_eq!((ca.method(), ca.algo()), (method, algo), "{s}{enc}");
                assert_eq!(ca.digest(), digest.as_slice());
                assert_eq!(ca.to_string().parse::<ContentAddress>().unwrap(), ca);
            }
        }
    }

    #[test]
    fn rejects_what_nix_rejects() {
        use ContentAddressError as E;
        let b32 = ABC_SHA256_B32;
        for (s, err) in [
            ("definitely not a CA", E::UnknownPrefix),
            ("", E::UnknownPrefix),
            ("sha256:abc", E::UnknownPrefix),
            ("fixed:", E::MissingAlgorithm),
            ("fixed:r:sha256", E::MissingAlgorithm),
            ("fixed:sha3:abc", E::UnknownAlgorithm("sha3".into())),
            ("fixed:r:SHA256:x", E::UnknownAlgorithm("SHA256".into())),
            (
                "text:sha1:0000000000000000000000000000000000000000",
                E::TextNotSha256(HashAlgo::Sha1),
            ),
            (
                "fixed:sha256:abcd",
                E::DigestLength {
                    algo: HashAlgo::Sha256,
                    len: 4,
                },
            ),
            (
                // A sha256 digest labelled sha1.
                &format!("fixed:sha1:{ABC_SHA256_HEX}"),
                E::DigestLength {
                    algo: HashAlgo::Sha1,
                    len: 64,
                },
            ),
        ] {
            assert_eq!(s.parse::<ContentAddress>(), Err(err), "{s:?}");
        }
        for s in [
            format!("fixed:r:sha256:{}", ABC_SHA256_HEX.replace('b', "g")),
            format!("fixed:r:sha256:{}", b32.replace('1', "e")),
            format!("fixed:r:sha256:{}", "!".repeat(44)),
            // SRI and prefixed hashes are not Nix's CA syntax.
            format!("fixed:r:sha256-{ABC_SHA256_B64}"),
            format!("fixed:r:sha256:sha256:{b32}"),
            format!("fixed:r:sha256:{b32}\n"),
            format!("fixed:r:sha256:{b32} "),
        ] {
            assert!(s.parse::<ContentAddress>().is_err(), "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn display_round_trips(bytes in any::<[u8; 32]>(), m in 0usize..4) {
            let method = [CaMethod::Text, CaMethod::Flat, CaMethod::NixArchive, CaMethod::Git][m];
            let ca = ContentAddress { method, algo: HashAlgo::Sha256, digest: bytes.to_vec() };
            prop_assert_eq!(ca.to_string().parse::<ContentAddress>().unwrap(), ca);
        }

        #[test]
        fn never_panics(s in "\\PC{0,120}") {
            let _ = s.parse::<ContentAddress>();
        }
    }
}
