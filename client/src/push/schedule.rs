//! Upload order within a batch of `larder push`: references first.

use std::collections::HashSet;

use larder_core::nix::store_path::StorePath;

/// Upload order within a batch: a path is committed only once every reference it
/// has in the batch is uploaded, so the cache never serves a path whose
/// closure is incomplete (Nix checks references before it uploads, too).
pub(super) struct Schedule {
    /// References still pending, per path.
    waiting: Vec<usize>,
    /// Paths referring to each path.
    dependents: Vec<Vec<usize>>,
    /// Paths ready to start, in references-first order.
    ready: std::collections::VecDeque<usize>,
    /// Paths that can never start because a reference failed.
    blocked: usize,
}

impl Schedule {
    pub(super) fn new(infos: &[crate::nix::PathInfo]) -> Self {
        let index: std::collections::HashMap<&StorePath, usize> = infos
            .iter()
            .enumerate()
            .map(|(i, p)| (&p.path, i))
            .collect();
        let mut waiting = vec![0; infos.len()];
        let mut dependents = vec![Vec::new(); infos.len()];
        for (i, info) in infos.iter().enumerate() {
            let refs: HashSet<usize> = info
                .references
                .iter()
                .filter_map(|r| index.get(r).copied())
                .filter(|&j| j != i)
                .collect();
            waiting[i] = refs.len();
            for j in refs {
                dependents[j].push(i);
            }
        }
        let ready = (0..infos.len()).filter(|&i| waiting[i] == 0).collect();
        Self {
            waiting,
            dependents,
            ready,
            blocked: 0,
        }
    }

    pub(super) fn next_ready(&mut self) -> Option<usize> {
        self.ready.pop_front()
    }

    pub(super) fn finished(&mut self, i: usize, ok: bool) {
        let dependents = std::mem::take(&mut self.dependents[i]);
        if !ok {
            self.block(dependents);
            return;
        }
        for d in dependents {
            self.waiting[d] = self.waiting[d].saturating_sub(1);
            if self.waiting[d] == 0 {
                self.ready.push_back(d);
            }
        }
    }

    /// Marks `paths` and everything depending on them as never to start.
    fn block(&mut self, mut paths: Vec<usize>) {
        while let Some(p) = paths.pop() {
            if self.waiting[p] == usize::MAX {
                continue;
            }
            self.waiting[p] = usize::MAX;
            self.blocked += 1;
            paths.extend(std::mem::take(&mut self.dependents[p]));
        }
    }

    /// Whether `i` can never be committed because a reference failed.
    pub(super) fn is_blocked(&self, i: usize) -> bool {
        self.waiting[i] == usize::MAX
    }

    pub(super) fn skipped(&self) -> usize {
        self.blocked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, refs: &[&str]) -> crate::nix::PathInfo {
        let path = |n: &str| StorePath::from_base_name(&format!("{:0>32}-{n}", n.len())).unwrap();
        crate::nix::PathInfo {
            path: path(name),
            nar_hash: larder_core::nix::hash::NarHash::digest(name.as_bytes()),
            nar_size: 1,
            references: refs.iter().map(|r| path(r)).collect(),
            deriver: None,
            signatures: vec![],
            ca: None,
        }
    }

    #[test]
    fn schedule_starts_paths_after_their_references() {
        // d -> {b, c}, b -> a, c -> a; names differ in length so paths differ.
        let infos = vec![
            info("dddd", &["bb", "ccc", "dddd"]),
            info("bb", &["a"]),
            info("ccc", &["a"]),
            info("a", &[]),
        ];
        let mut s = Schedule::new(&infos);
        assert_eq!(s.next_ready(), Some(3));
        assert_eq!(s.next_ready(), None);
        s.finished(3, true);
        let mut next: Vec<_> = std::iter::from_fn(|| s.next_ready()).collect();
        next.sort();
        assert_eq!(next, vec![1, 2]);
        s.finished(1, true);
        assert_eq!(s.next_ready(), None);
        s.finished(2, true);
        assert_eq!(s.next_ready(), Some(0));
        assert_eq!(s.skipped(), 0);
    }

    #[test]
    fn a_failed_reference_blocks_its_dependents() {
        let infos = vec![
            info("dddd", &["bb"]),
            info("bb", &["a"]),
            info("a", &[]),
            info("zzzzz", &[]),
        ];
        let mut s = Schedule::new(&infos);
        let mut first: Vec<_> = std::iter::from_fn(|| s.next_ready()).collect();
        first.sort();
        assert_eq!(first, vec![2, 3]);
        s.finished(2, false);
        s.finished(3, true);
        assert_eq!(s.next_ready(), None);
        assert_eq!(s.skipped(), 2);
    }
}
