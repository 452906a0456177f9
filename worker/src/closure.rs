//! The reference graph of one cache, for GC's mark (docs/gc.md "Closures").
//!
//! A path is *live* while it is pinned, within its retention, or referenced
//! (transitively, within its cache) by a live path. The graph is read in
//! id pages (no recursive SQL) and kept compact in memory: each distinct
//! 32-character hash part (of a path, or of a reference the cache may not
//! hold) is interned to a `u32` node, and each object keeps its references
//! as a range of `u32`s. That costs about 100 bytes per path plus 4 per
//! reference (1M paths with 10 references each: about 150 MB).
//!
//! The mark yields the *doomed* paths (idle and needed by no live path) in
//! referrers-first layers: a path comes only after every doomed path that
//! refers to it. GC deletes layer by layer, and each `DELETE` re-checks in
//! the database that the path is still idle and that no remaining object
//! refers to it, so the graph being a snapshot costs nothing in safety.

use std::collections::HashMap;

use larder_shared::db::{CacheId, Db, DbError, ObjectId, gc, pins};

/// Objects read per page.
const PAGE: i64 = 1000;
/// No node.
const NONE: u32 = u32::MAX;

type Key = [u8; 32];

fn key(hash: &str) -> Key {
    let mut k = [0u8; 32];
    let b = hash.as_bytes();
    let n = b.len().min(32);
    k[..n].copy_from_slice(&b[..n]);
    k
}

/// The objects of one cache and the references among them.
#[derive(Debug, Default)]
pub struct Graph {
    /// Hash part → node.
    nodes: HashMap<Key, u32>,
    /// Node → object slot, or [`NONE`] for a hash the cache does not hold.
    node_object: Vec<u32>,
    /// Per object slot: row id.
    ids: Vec<ObjectId>,
    /// Per object slot: last use.
    last_used: Vec<i64>,
    /// Per object slot: the start of its references in `targets` (one more
    /// entry at the end).
    starts: Vec<u32>,
    /// Referenced nodes, distinct per object, without the object itself.
    targets: Vec<u32>,
    /// Pinned nodes.
    pinned: Vec<u32>,
}

impl Graph {
    /// Reads the objects and pins of `cache_id`.
    pub async fn load(db: &Db, cache_id: CacheId) -> Result<Self, DbError> {
        let mut g = Graph {
            starts: vec![0],
            ..Graph::default()
        };
        let mut after = ObjectId(0);
        loop {
            let page = {
                let mut conn = db.conn().await?;
                gc::objects_page(conn.raw(), cache_id, after, PAGE).await?
            };
            let Some(last) = page.last() else { break };
            after = last.id;
            for o in &page {
                g.add(o);
            }
        }
        let pinned = {
            let mut conn = db.conn().await?;
            pins::list(conn.raw(), cache_id).await?
        };
        g.pinned = pinned
            .iter()
            .filter_map(|p| g.nodes.get(&key(&p.store_path_hash)).copied())
            .collect();
        Ok(g)
    }

    fn intern(&mut self, k: Key) -> u32 {
        let next = self.node_object.len() as u32;
        let node = *self.nodes.entry(k).or_insert(next);
        if node == next {
            self.node_object.push(NONE);
        }
        node
    }

    fn add(&mut self, o: &gc::ObjectNode) {
        let slot = self.ids.len() as u32;
        let me = self.intern(key(&o.store_path_hash));
        if self.node_object[me as usize] != NONE {
            return; // (cache, hash) is unique; a page overlap would repeat it
        }
        self.node_object[me as usize] = slot;
        self.ids.push(o.id);
        self.last_used.push(o.last_accessed_at);
        let begin = self.targets.len();
        for r in o.refs.split_whitespace() {
            let Some(h) = r.get(..32) else { continue };
            let t = self.intern(key(h));
            if t != me {
                self.targets.push(t);
            }
        }
        self.targets[begin..].sort_unstable();
        let mut n = begin;
        for i in begin..self.targets.len() {
            if i == begin || self.targets[i] != self.targets[n - 1] {
                self.targets[n] = self.targets[i];
                n += 1;
            }
        }
        self.targets.truncate(n);
        self.starts.push(self.targets.len() as u32);
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the cache holds no object.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Object slots `slot` refers to (in the cache).
    fn referents(&self, slot: usize) -> impl Iterator<Item = usize> + '_ {
        let (a, b) = (self.starts[slot] as usize, self.starts[slot + 1] as usize);
        self.targets[a..b]
            .iter()
            .map(|&t| self.node_object[t as usize])
            .filter(|&s| s != NONE)
            .map(|s| s as usize)
    }

    /// Marks the live objects for `cutoff` (idle = last used before it) and
    /// plans the deletion of the rest.
    pub fn mark(&self, cutoff: i64) -> Plan {
        let n = self.len();
        let mut live = vec![false; n];
        let mut stack: Vec<usize> = Vec::new();
        let pinned = self
            .pinned
            .iter()
            .map(|&p| self.node_object[p as usize])
            .filter(|&s| s != NONE)
            .map(|s| s as usize);
        let fresh = (0..n).filter(|&s| self.last_used[s] >= cutoff);
        for s in pinned.chain(fresh) {
            if !live[s] {
                live[s] = true;
                stack.push(s);
            }
        }
        while let Some(s) = stack.pop() {
            for t in self.referents(s) {
                if !live[t] {
                    live[t] = true;
                    stack.push(t);
                }
            }
        }
        // Referrers first (Kahn over the doomed subgraph): `waiting[t]` counts
        // the doomed objects referring to `t` not yet placed.
        let mut waiting = vec![0u32; n];
        for s in (0..n).filter(|&s| !live[s]) {
            for t in self.referents(s).filter(|&t| !live[t]) {
                waiting[t] += 1;
            }
        }
        let mut layers = Vec::new();
        let mut layer: Vec<usize> = (0..n).filter(|&s| !live[s] && waiting[s] == 0).collect();
        let mut placed = 0;
        while !layer.is_empty() {
            let mut next = Vec::new();
            for &s in &layer {
                for t in self.referents(s).filter(|&t| !live[t]) {
                    waiting[t] -= 1;
                    if waiting[t] == 0 {
                        next.push(t);
                    }
                }
            }
            placed += layer.len();
            layers.push(layer);
            layer = next;
        }
        let doomed = live.iter().filter(|l| !**l).count();
        let cyclic: Vec<usize> = (0..n).filter(|&s| !live[s] && waiting[s] > 0).collect();
        debug_assert_eq!(placed + cyclic.len(), doomed);
        let idle_kept = (0..n)
            .filter(|&s| live[s] && self.last_used[s] < cutoff)
            .count() as u64;
        Plan {
            layers,
            cyclic,
            idle_kept,
        }
    }

    /// Row id of an object slot.
    pub fn id(&self, slot: usize) -> ObjectId {
        self.ids[slot]
    }

    /// Last use of an object slot.
    pub fn last_used(&self, slot: usize) -> i64 {
        self.last_used[slot]
    }

    /// Doomed referents of `slot` (for skipping them when `slot` is kept).
    pub fn referent_slots(&self, slot: usize) -> Vec<usize> {
        self.referents(slot).collect()
    }
}

/// What a mark decided for one cache.
#[derive(Debug, Default)]
pub struct Plan {
    /// Doomed object slots, referrers first: nothing in a layer is referred
    /// to by a doomed object of the same or a later layer.
    pub layers: Vec<Vec<usize>>,
    /// Doomed objects in (or only reachable from) a reference cycle, which
    /// Nix never produces but uploaded metadata can: they go together or
    /// not at all.
    pub cyclic: Vec<usize>,
    /// Idle objects kept because a live path needs them.
    pub idle_kept: u64,
}

impl Plan {
    /// Every doomed slot, referrers first, then the cyclic ones.
    pub fn doomed(&self) -> impl Iterator<Item = usize> + '_ {
        self.layers.iter().flatten().chain(&self.cyclic).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(c: char) -> String {
        c.to_string().repeat(32)
    }

    fn node(id: i64, c: char, refs: &[char], at: i64) -> gc::ObjectNode {
        gc::ObjectNode {
            id: ObjectId(id),
            store_path_hash: h(c),
            refs: refs
                .iter()
                .map(|r| format!("{}-x", h(*r)))
                .collect::<Vec<_>>()
                .join(" "),
            last_accessed_at: at,
        }
    }

    fn graph(objects: &[gc::ObjectNode], pinned: &[char]) -> Graph {
        let mut g = Graph {
            starts: vec![0],
            ..Graph::default()
        };
        for o in objects {
            g.add(o);
        }
        g.pinned = pinned
            .iter()
            .filter_map(|c| g.nodes.get(&key(&h(*c))).copied())
            .collect();
        g
    }

    fn ids(g: &Graph, slots: impl Iterator<Item = usize>) -> Vec<i64> {
        let mut v: Vec<i64> = slots.map(|s| g.id(s).get()).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn live_roots_keep_their_closure_and_the_rest_goes_referrers_first() {
        // a (fresh) → b → c; d (idle) → c, e; f idle alone; z absent.
        let g = graph(
            &[
                node(1, 'a', &['b', 'a', 'z'], 100),
                node(2, 'b', &['c'], 0),
                node(3, 'c', &[], 0),
                node(4, 'd', &['c', 'e'], 0),
                node(5, 'e', &[], 0),
                node(6, 'f', &[], 0),
                node(7, 'g', &['b', 'f'], 0),
            ],
            &[],
        );
        let plan = g.mark(50);
        assert_eq!(ids(&g, plan.doomed()), vec![4, 5, 6, 7]);
        assert_eq!(plan.idle_kept, 2, "b and c");
        assert!(plan.cyclic.is_empty());
        let first: Vec<i64> = plan.layers[0].iter().map(|&s| g.id(s).get()).collect();
        assert_eq!(first, vec![4, 7], "d before e, g before f");
    }

    #[test]
    fn pins_protect_closures_and_cycles_are_set_apart() {
        let g = graph(
            &[
                node(1, 'a', &['b'], 0),
                node(2, 'b', &[], 0),
                node(3, 'p', &['q'], 0),
                node(4, 'q', &['p', 'r'], 0),
                node(5, 'r', &[], 0),
            ],
            &['a'],
        );
        let plan = g.mark(50);
        assert_eq!(ids(&g, plan.doomed()), vec![3, 4, 5]);
        assert_eq!(ids(&g, plan.cyclic.iter().copied()), vec![3, 4, 5]);
        assert_eq!(plan.idle_kept, 2);
    }
}
