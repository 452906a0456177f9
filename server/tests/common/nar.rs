//! Synthetic store paths: NARs built with `larder_core::nix::nar` from
//! pseudo-random file contents (a seeded generator, so every run chunks the
//! same way and two fixtures share bytes only where a test wants them to).

use bytes::Bytes;
use serde_json::{Value, json};

use larder_core::nix::hash::NarHash;
use larder_core::nix::nar::NarNode;

/// nix-base32's alphabet (no e, o, u, t).
const NIX_BASE32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// SplitMix64: tiny, seeded, good enough to defeat compression and make
/// FastCDC cut content-defined chunks.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// A 32-character store path hash part.
    pub fn store_hash(&mut self) -> String {
        (0..32)
            .map(|_| NIX_BASE32[(self.next_u64() % 32) as usize] as char)
            .collect()
    }
}

/// A store path with its NAR, ready to push.
#[derive(Clone)]
pub struct TestNar {
    /// Base name `<hash>-<name>`.
    pub base_name: String,
    /// The NAR.
    pub bytes: Bytes,
    /// SHA-256 of the NAR.
    pub nar_hash: NarHash,
    /// Reference base names.
    pub references: Vec<String>,
    /// Deriver base name.
    pub deriver: Option<String>,
}

impl TestNar {
    /// A directory of files `f0`, `f1`, … of the given sizes, contents from `seed`.
    pub fn files(name: &str, seed: u64, sizes: &[usize]) -> Self {
        let mut rng = Rng::new(seed);
        let entries: Vec<(String, NarNode)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| (format!("f{i}"), NarNode::file(rng.bytes(len))))
            .collect();
        Self::from_node(name, seed, &NarNode::directory(entries))
    }

    /// A store path (hash from `seed`) whose NAR is `node`.
    pub fn from_node(name: &str, seed: u64, node: &NarNode) -> Self {
        Self::from_bytes(name, seed, node.to_bytes())
    }

    /// A store path (hash from `seed`) with arbitrary NAR bytes, valid or not.
    pub fn from_bytes(name: &str, seed: u64, bytes: Vec<u8>) -> Self {
        let mut rng = Rng::new(seed ^ 0x5eed_5eed_5eed_5eed);
        let base_name = format!("{}-{name}", rng.store_hash());
        Self {
            base_name,
            nar_hash: NarHash::digest(&bytes),
            bytes: Bytes::from(bytes),
            references: Vec::new(),
            deriver: None,
        }
    }

    /// The same NAR under another store path (what two builds of one
    /// derivation with identical output look like to the store).
    pub fn with_path(&self, name: &str, seed: u64) -> Self {
        let other = Self::from_bytes(name, seed, Vec::new());
        Self {
            base_name: other.base_name,
            ..self.clone()
        }
    }

    /// The 32-character hash part.
    pub fn store_hash(&self) -> &str {
        &self.base_name[..32]
    }

    /// `/nix/store/<base name>`.
    pub fn store_path(&self) -> String {
        format!("/nix/store/{}", self.base_name)
    }

    /// The NAR size.
    pub fn nar_size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The NAR hash as NAR URLs spell it (bare nix-base32).
    pub fn url_hash(&self) -> String {
        self.nar_hash.to_base32()
    }

    /// Attic's `X-Attic-Nar-Info` JSON (docs/protocol.md "Attic wire format"),
    /// NAR hash as `sha256:<hex>`.
    pub fn info(&self, cache: &str) -> Value {
        json!({
            "cache": cache,
            "store_path_hash": self.store_hash(),
            "store_path": self.store_path(),
            "references": self.references,
            "system": "x86_64-linux",
            "deriver": self.deriver,
            "sigs": [],
            "ca": null,
            "nar_hash": format!("sha256:{}", self.nar_hash.to_hex()),
            "nar_size": self.nar_size(),
        })
    }
}
