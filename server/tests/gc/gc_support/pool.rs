//! NARs built from a shared pool of random blocks, so different NARs share
//! content-defined chunks: each NAR is a directory holding a few pool blocks
//! as files plus one small file of its own (no two NARs are equal).
//!
//! Blocks are several times FastCDC's average chunk (64 KiB), so every
//! occurrence of a block yields the same interior chunks whatever its
//! neighbours are.

use larder_core::nix::nar::NarNode;

use crate::common::nar::{Rng, TestNar};

/// Random blocks NARs are assembled from.
pub struct BlockPool {
    blocks: Vec<Vec<u8>>,
}

impl BlockPool {
    /// `count` blocks of `size` random bytes, from `seed`.
    pub fn new(seed: u64, count: usize, size: usize) -> Self {
        let mut rng = Rng::new(seed);
        Self {
            blocks: (0..count).map(|_| rng.bytes(size)).collect(),
        }
    }

    /// A NAR of the blocks `picks` (indexes into the pool, repeats allowed)
    /// and a 100-byte file from `path_seed`, at a store path from `path_seed`.
    pub fn nar(&self, name: &str, path_seed: u64, picks: &[usize]) -> TestNar {
        let mut entries: Vec<(String, NarNode)> = picks
            .iter()
            .enumerate()
            .map(|(i, &b)| (format!("b{i}"), NarNode::file(self.blocks[b].clone())))
            .collect();
        entries.push(("id".into(), NarNode::file(Rng::new(path_seed).bytes(100))));
        TestNar::from_node(name, path_seed, &NarNode::directory(entries))
    }

    /// A NAR of 1 to `max_blocks` random blocks (see [`Self::nar`]).
    pub fn random_nar(
        &self,
        rng: &mut Rng,
        name: &str,
        path_seed: u64,
        max_blocks: usize,
    ) -> TestNar {
        let n = 1 + (rng.next_u64() as usize) % max_blocks;
        let picks: Vec<usize> = (0..n)
            .map(|_| (rng.next_u64() as usize) % self.blocks.len())
            .collect();
        self.nar(name, path_seed, &picks)
    }
}

/// `len` bytes of 16 letters: random, yet compressing about 2:1.
pub fn text(seed: u64, len: usize) -> Vec<u8> {
    Rng::new(seed)
        .bytes(len)
        .into_iter()
        .map(|b| b'a' + (b & 0x0f))
        .collect()
}

/// A NAR holding one file of [`text`], at a store path from `seed`.
pub fn text_nar(name: &str, seed: u64, len: usize) -> TestNar {
    let node = NarNode::directory([("data", NarNode::file(text(seed, len)))]);
    TestNar::from_node(name, seed, &node)
}
