//! Real store paths without nixpkgs: `derivation`s with a `/bin/sh` builder
//! (no sandbox) whose outputs contain their dependencies' store paths, so
//! the references are real (docs/protocol.md, "Real store paths without
//! nixpkgs"). A per-test random seed in every build script makes the paths
//! new on every run.

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::BuildHasher;

use crate::nix::Nix;

/// A random seed for one test run, so its store paths are new each run.
pub fn random_seed() -> u64 {
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// One derivation of a [`StoreTree`].
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Derivation name.
    pub name: String,
    /// Indices of nodes whose output paths this output contains (references).
    pub deps: Vec<usize>,
    /// Sizes of the files written into the output.
    pub files: Vec<u64>,
}

/// A set of `derivation`s built without nixpkgs (`/bin/sh` builder, no
/// sandbox): each output holds a seed, the store paths of its dependencies
/// (so references are real), a symlink, an executable, and files of
/// pseudo-random sizes, alternately random (incompressible) and repetitive.
#[derive(Debug, Clone)]
pub struct StoreTree {
    /// Written into every build script: new seed, new store paths.
    pub seed: u64,
    /// The derivations; dependencies point to lower indices.
    pub nodes: Vec<NodeSpec>,
}

impl StoreTree {
    /// `n` derivations in a binary tree: node `i > 0` refers to node
    /// `(i - 1) / 2`. Every other node has a file larger than 256 KiB, so
    /// NARs get chunked.
    pub fn binary_tree(seed: u64, n: usize) -> Self {
        let mut rng = SplitMix(seed);
        let nodes = (0..n)
            .map(|i| {
                let mut files = vec![rng.below(4096) + 1, rng.below(64 * 1024) + 1];
                if i % 2 == 0 {
                    files.push(256 * 1024 + rng.below(512 * 1024));
                }
                NodeSpec {
                    name: format!("larder-e2e-{i}"),
                    deps: if i == 0 { vec![] } else { vec![(i - 1) / 2] },
                    files,
                }
            })
            .collect();
        Self { seed, nodes }
    }

    /// One derivation with a single random file of `size` bytes.
    pub fn single(seed: u64, name: &str, size: u64) -> Self {
        Self {
            seed,
            nodes: vec![NodeSpec {
                name: name.to_owned(),
                deps: vec![],
                files: vec![size],
            }],
        }
    }

    /// `n` small derivations (a few KiB each) in a DAG with two tops: node
    /// `i > 0` refers to `(i - 1) / 2` and, from `i = 2`, to `i - 2` too, so
    /// paths have one or two references and the closure is deep and shared.
    pub fn small_dag(seed: u64, n: usize) -> Self {
        let mut rng = SplitMix(seed);
        let nodes = (0..n)
            .map(|i| {
                let mut deps = Vec::new();
                if i > 0 {
                    deps.push((i - 1) / 2);
                }
                if i >= 2 && (i - 1) / 2 != i - 2 {
                    deps.push(i - 2);
                }
                NodeSpec {
                    name: format!("larder-e2e-dag-{i}"),
                    deps,
                    files: vec![rng.below(2048) + 1, rng.below(8192) + 1],
                }
            })
            .collect();
        Self { seed, nodes }
    }

    /// `n` independent pairs of small paths: node `2k` is a dependency,
    /// node `2k + 1` (named `<prefix>-<k>`) refers to it. [`Self::tops`]
    /// lists the main paths, pair by pair.
    pub fn pairs(seed: u64, prefix: &str, n: usize) -> Self {
        let mut rng = SplitMix(seed);
        let nodes = (0..n)
            .flat_map(|k| {
                [
                    NodeSpec {
                        name: format!("{prefix}-{k}-dep"),
                        deps: vec![],
                        files: vec![rng.below(2048) + 1, rng.below(16 * 1024) + 1],
                    },
                    NodeSpec {
                        name: format!("{prefix}-{k}"),
                        deps: vec![2 * k],
                        files: vec![rng.below(2048) + 1, rng.below(16 * 1024) + 1],
                    },
                ]
            })
            .collect();
        Self { seed, nodes }
    }

    /// A chain: node `i > 0` refers to node `i - 1`, and holds one random
    /// (incompressible) file of `sizes[i]` bytes. One top, the last node.
    pub fn chain(seed: u64, prefix: &str, sizes: &[u64]) -> Self {
        let nodes = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| NodeSpec {
                name: format!("{prefix}-{i}"),
                deps: if i == 0 { vec![] } else { vec![i - 1] },
                files: vec![size],
            })
            .collect();
        Self { seed, nodes }
    }

    /// Nodes no other node depends on: their closures cover the tree.
    pub fn tops(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| !self.nodes.iter().any(|n| n.deps.contains(i)))
            .collect()
    }

    /// The Nix expression: a list of the top derivations.
    pub fn render(&self) -> String {
        let seed = self.seed;
        let mut s = String::from(
            "let\n  mk = name: script: derivation {\n    inherit name;\n    system = builtins.currentSystem;\n    builder = \"/bin/sh\";\n    PATH = \"/usr/bin:/bin\";\n    args = [ \"-c\" script ];\n  };\n",
        );
        for (i, node) in self.nodes.iter().enumerate() {
            let mut script = format!(
                "set -e; mkdir -p $out/sub; echo 'seed {seed:016x} node {i}' > $out/seed; "
            );
            for d in &node.deps {
                let _ = write!(script, "echo ${{d{d}}} >> $out/refs; ");
            }
            for (k, size) in node.files.iter().enumerate() {
                if k % 2 == 0 {
                    let _ = write!(script, "head -c {size} /dev/urandom > $out/f{k}; ");
                } else {
                    let _ = write!(
                        script,
                        "yes 'larder e2e {seed:016x} {i} {k}' | head -c {size} > $out/sub/f{k}; chmod +x $out/sub/f{k}; "
                    );
                }
            }
            script.push_str("ln -s seed $out/link");
            let _ = writeln!(s, "  d{i} = mk \"{}\" \"{script}\";", node.name);
        }
        s.push_str("in [");
        for i in self.tops() {
            let _ = write!(s, " d{i}");
        }
        s.push_str(" ]\n");
        s
    }

    /// Builds the tree; returns the output paths of [`Self::tops`], in order.
    pub async fn build(&self, nix: &Nix) -> anyhow::Result<Vec<String>> {
        self.build_with(nix, &[]).await
    }

    /// [`Self::build`] with more `--option NAME VALUE` pairs.
    pub async fn build_with(
        &self,
        nix: &Nix,
        options: &[(&str, &str)],
    ) -> anyhow::Result<Vec<String>> {
        let file = nix.dir().join(format!("tree-{:016x}.nix", self.seed));
        std::fs::write(&file, self.render())?;
        let paths = nix.build_with(&file, options).await?;
        anyhow::ensure!(
            paths.len() == self.tops().len(),
            "nix-build printed {} paths for {} top derivations: {paths:?}",
            paths.len(),
            self.tops().len()
        );
        Ok(paths)
    }
}

/// SplitMix64: a tiny deterministic generator for file sizes.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
