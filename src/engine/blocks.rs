//! The paged KV block manager: which blocks of the pool hold which sequence's positions.
//!
//! The pool is `num_blocks` blocks of `block_size` positions. Each running sequence has a block table (its
//! blocks in position order) and each block a reference count: the number of tables that hold it. Blocks are
//! shared two ways, so a prompt is computed once:
//! - **fork**: the children of a request with several samples take every block of the parent that prefilled
//!   their prompt, its partial last block included. Before a sequence writes into a block another table also
//!   holds, it gets its own copy (copy-on-write: the step's `copies`).
//! - **prefix cache**: a full block whose keys and values are computed is registered under a hash chain of
//!   its content (the previous block's hash and its own tokens), so a later sequence whose tokens start the
//!   same way takes those blocks instead of recomputing them. A cached block no table holds stays cached but
//!   evictable; it is reused, least recently freed first, only once no never-cached free block is left.
//!
//! The cache trusts 64-bit hashes: two different prefixes with equal chains would share a block.
use super::SeqId;
use anyhow::{ensure, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

/// Blocks needed to hold `tokens` positions.
pub fn blocks_for(tokens: usize, block_size: usize) -> usize {
    tokens.div_ceil(block_size)
}

/// The hash of a full block: its tokens after the hash of the block before it (None for the first).
fn chain(parent: Option<u64>, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new(); // fixed keys: the same content hashes the same in every engine
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

#[derive(Clone, Debug, Default)]
struct Table {
    blocks: Vec<u32>,
    /// The chain hash of each full, computed block, in order (a prefix of `blocks`).
    hashes: Vec<u64>,
}

/// Cached blocks holding a prefix of some tokens ([`BlockManager::lookup`]).
#[derive(Debug, Default)]
pub struct PrefixHit {
    blocks: Vec<u32>,
    hashes: Vec<u64>,
    /// How many of `blocks` no table holds now: taking them uses up free blocks.
    revived: usize,
}

pub struct BlockManager {
    block_size: usize,
    refs: Vec<u32>,
    /// Free blocks that are not in the prefix cache.
    free: Vec<u32>,
    /// Free blocks still in the prefix cache, keyed by when they were freed (`freed_at`).
    evictable: BTreeMap<u64, u32>,
    freed_at: Vec<u64>,
    clock: u64,
    /// The chain hash of each cached block, and the block of each cached hash.
    hash_of: Vec<Option<u64>>,
    cached: HashMap<u64, u32>,
    tables: HashMap<SeqId, Table>,
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize) -> BlockManager {
        BlockManager {
            block_size,
            refs: vec![0; num_blocks],
            free: (0..num_blocks as u32).rev().collect(), // popped from the end: block 0 first
            evictable: BTreeMap::new(),
            freed_at: vec![0; num_blocks],
            clock: 0,
            hash_of: vec![None; num_blocks],
            cached: HashMap::new(),
            tables: HashMap::new(),
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.refs.len()
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks a sequence can still get: free ones and evictable cached ones.
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks some table holds.
    pub fn in_use(&self) -> usize {
        self.num_blocks() - self.available()
    }

    /// `seq`'s block table (empty when it has none).
    pub fn table(&self, seq: SeqId) -> &[u32] {
        self.tables.get(&seq).map_or(&[], |t| &t.blocks)
    }

    /// The cached blocks that hold the longest prefix of `tokens` in whole blocks.
    pub fn lookup(&self, tokens: &[u32]) -> PrefixHit {
        let mut hit = PrefixHit::default();
        for block in tokens.chunks_exact(self.block_size) {
            let h = chain(hit.hashes.last().copied(), block);
            let Some(&b) = self.cached.get(&h) else { break };
            hit.revived += usize::from(self.refs[b as usize] == 0);
            hit.blocks.push(b);
            hit.hashes.push(h);
        }
        hit
    }

    /// Positions that `hit` covers.
    pub fn hit_tokens(&self, hit: &PrefixHit) -> usize {
        hit.blocks.len() * self.block_size
    }

    /// Free blocks it takes to admit a sequence with `hit` and grow its table to `upto` positions.
    pub fn admit_cost(&self, hit: &PrefixHit, upto: usize) -> usize {
        blocks_for(upto, self.block_size).saturating_sub(hit.blocks.len()) + hit.revived
    }

    /// Gives `seq` a table that starts with the blocks of `hit`.
    pub fn admit(&mut self, seq: SeqId, hit: PrefixHit) {
        for &b in &hit.blocks {
            if self.refs[b as usize] == 0 {
                self.evictable.remove(&self.freed_at[b as usize]);
            }
            self.refs[b as usize] += 1;
        }
        self.tables.insert(seq, Table { blocks: hit.blocks, hashes: hit.hashes });
    }

    /// Gives `child` every block of `parent`'s table, shared.
    pub fn fork(&mut self, parent: SeqId, child: SeqId) {
        let t = self.tables.get(&parent).cloned().unwrap_or_default();
        for &b in &t.blocks {
            self.refs[b as usize] += 1;
        }
        self.tables.insert(child, t);
    }

    /// Readies `seq`'s table for writing positions `from..upto`: appends blocks, and swaps every block in
    /// that range that another table also holds for a fresh copy, pushing `(old, new)` to `copies`. Returns
    /// false, changing nothing, when the pool has too few blocks (or `seq` has no table).
    pub fn reserve(&mut self, seq: SeqId, from: usize, upto: usize, copies: &mut Vec<(u32, u32)>) -> bool {
        let want = blocks_for(upto, self.block_size);
        let Some(t) = self.tables.get(&seq) else { return false };
        let shared: Vec<usize> = (from / self.block_size..want.min(t.blocks.len()))
            .filter(|&i| self.refs[t.blocks[i] as usize] > 1)
            .collect();
        let Some(mut fresh) = self.take(want.saturating_sub(t.blocks.len()) + shared.len()) else { return false };
        let Some(t) = self.tables.get_mut(&seq) else { return false };
        for i in shared {
            let Some(new) = fresh.pop() else { break };
            let old = std::mem::replace(&mut t.blocks[i], new);
            self.refs[old as usize] -= 1; // was shared: someone still holds it
            copies.push((old, new));
        }
        t.blocks.extend(fresh);
        true
    }

    /// `n` blocks with one reference each, or None (taking nothing) when fewer are available: never-cached
    /// free blocks first, then the least recently freed cached ones, which leave the cache.
    fn take(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.available() {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let b = match self.free.pop() {
                Some(b) => b,
                None => {
                    let (_, b) = self.evictable.pop_first()?;
                    if let Some(h) = self.hash_of[b as usize].take() {
                        self.cached.remove(&h);
                    }
                    b
                }
            };
            self.refs[b as usize] = 1;
            out.push(b);
        }
        Some(out)
    }

    /// Registers in the prefix cache the full blocks of `seq` whose keys and values are now computed (the
    /// first `computed` of `tokens`). A block whose content is cached already stays out of the cache.
    pub fn commit(&mut self, seq: SeqId, tokens: &[u32], computed: usize) {
        let bs = self.block_size;
        let Some(t) = self.tables.get_mut(&seq) else { return };
        let full = computed.min(tokens.len()) / bs;
        while t.hashes.len() < full {
            let i = t.hashes.len();
            let Some(&b) = t.blocks.get(i) else { return };
            let h = chain(t.hashes.last().copied(), &tokens[i * bs..(i + 1) * bs]);
            if self.hash_of[b as usize].is_none() && !self.cached.contains_key(&h) {
                self.cached.insert(h, b);
                self.hash_of[b as usize] = Some(h);
            }
            t.hashes.push(h);
        }
    }

    /// Drops `seq`'s table. A block no table holds any more becomes free, or evictable if it is cached.
    pub fn free(&mut self, seq: SeqId) {
        let Some(t) = self.tables.remove(&seq) else { return };
        // The tail first: a prompt's later blocks are then evicted before its start, which more sequences share.
        for &b in t.blocks.iter().rev() {
            let i = b as usize;
            self.refs[i] -= 1;
            if self.refs[i] > 0 {
                continue;
            }
            if self.hash_of[i].is_some() {
                self.clock += 1;
                self.freed_at[i] = self.clock;
                self.evictable.insert(self.clock, b);
            } else {
                self.free.push(b);
            }
        }
    }

    /// Checks the accounting: every reference count equals the number of tables holding the block, every
    /// block is exactly one of held, free or evictable, and the cache's two maps agree. O(blocks).
    pub fn check(&self) -> Result<()> {
        let n = self.num_blocks();
        let mut held = vec![0u32; n];
        for (seq, t) in &self.tables {
            ensure!(t.hashes.len() <= t.blocks.len(), "sequence {seq} hashes more blocks than it holds");
            for &b in &t.blocks {
                *held.get_mut(b as usize).with_context(|| format!("sequence {seq} holds block {b} of {n}"))? += 1;
            }
        }
        let mut unheld = vec![false; n];
        let loose = self.free.iter().map(|&b| (b, false)).chain(self.evictable.iter().map(|(_, &b)| (b, true)));
        for (b, cached) in loose {
            let i = b as usize;
            ensure!(i < n && !unheld[i], "block {b} is listed free twice (or out of range)");
            unheld[i] = true;
            ensure!(
                self.hash_of[i].is_some() == cached,
                "free block {b}: cached {cached} but hash {:?}",
                self.hash_of[i]
            );
        }
        for (&at, &b) in &self.evictable {
            ensure!(self.freed_at[b as usize] == at, "evictable block {b} is filed under the wrong time");
        }
        for b in 0..n {
            ensure!(
                self.refs[b] == held[b],
                "block {b}: reference count {} but {} tables hold it",
                self.refs[b],
                held[b]
            );
            ensure!(
                (self.refs[b] == 0) == unheld[b],
                "block {b}: {} references, listed free: {}",
                self.refs[b],
                unheld[b]
            );
        }
        for (&h, &b) in &self.cached {
            ensure!(self.hash_of[b as usize] == Some(h), "cached hash {h:x} names block {b}, which has another hash");
        }
        ensure!(self.hash_of.iter().flatten().count() == self.cached.len(), "a block has a hash the cache lacks");
        Ok(())
    }

    /// Checks `seq`'s table against its first `computed` tokens: it holds exactly the blocks for them, and
    /// every cached block in it is cached under the hash of exactly its content.
    pub fn check_table(&self, seq: SeqId, tokens: &[u32], computed: usize) -> Result<()> {
        let t = self.tables.get(&seq).with_context(|| format!("running sequence {seq} has no block table"))?;
        let bs = self.block_size;
        ensure!(
            t.blocks.len() == blocks_for(computed, bs),
            "sequence {seq}: {} blocks for {computed} tokens",
            t.blocks.len()
        );
        ensure!(t.hashes.len() == computed / bs, "sequence {seq}: {} hashes for {computed} tokens", t.hashes.len());
        let mut parent = None;
        for (i, (&b, &h)) in t.blocks.iter().zip(&t.hashes).enumerate() {
            let want = chain(parent, &tokens[i * bs..(i + 1) * bs]);
            ensure!(h == want, "sequence {seq}: block {i}'s hash does not match its tokens");
            let cached = self.hash_of[b as usize];
            ensure!(cached.is_none() || cached == Some(h), "sequence {seq}: block {b} is cached under other content");
            parent = Some(h);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manager with `seq` holding `tokens`, all computed and committed.
    fn computed(bm: &mut BlockManager, seq: SeqId, tokens: &[u32]) {
        let hit = bm.lookup(&tokens[..tokens.len() - 1]);
        let from = bm.hit_tokens(&hit);
        bm.admit(seq, hit);
        assert!(bm.reserve(seq, from, tokens.len(), &mut Vec::new()));
        bm.commit(seq, tokens, tokens.len());
        bm.check().unwrap();
        bm.check_table(seq, tokens, tokens.len()).unwrap();
    }

    #[test]
    fn lookup_takes_the_longest_cached_prefix_in_whole_blocks() {
        let mut bm = BlockManager::new(8, 4);
        let prompt: Vec<u32> = (0..8).collect();
        computed(&mut bm, 1, &prompt);
        assert_eq!(bm.hit_tokens(&bm.lookup(&prompt)), 8);
        assert_eq!(bm.hit_tokens(&bm.lookup(&prompt[..7])), 4);
        assert_eq!(bm.hit_tokens(&bm.lookup(&(0..11).collect::<Vec<_>>())), 8);
        assert_eq!(bm.hit_tokens(&bm.lookup(&[0, 1, 2, 3, 4, 5, 9, 7, 8])), 4);
        assert_eq!(bm.hit_tokens(&bm.lookup(&[1, 1, 2, 3, 4])), 0);
        // A block is found by its content and everything before it.
        computed(&mut bm, 2, &[4, 5, 6, 7, 0]);
        assert_eq!(bm.hit_tokens(&bm.lookup(&[4, 5, 6, 7, 4, 5, 6, 7])), 4);
    }

    #[test]
    fn freed_cached_blocks_are_evicted_last_and_oldest_first() {
        let mut bm = BlockManager::new(4, 2);
        computed(&mut bm, 1, &[1, 2, 3, 4]); // blocks 0, 1, both cached
        bm.free(1);
        assert_eq!((bm.in_use(), bm.available()), (0, 4));
        // Revived from the cache: no block is taken from the free list.
        let hit = bm.lookup(&[1, 2, 3, 4]);
        assert_eq!((bm.hit_tokens(&hit), bm.admit_cost(&hit, 5)), (4, 3));
        bm.admit(2, hit);
        bm.free(2);
        // Two never-cached blocks go first, then the cached tail block (freed before its head).
        computed(&mut bm, 3, &[9, 9, 8, 8, 7, 7]);
        assert_eq!(bm.hit_tokens(&bm.lookup(&[1, 2, 3, 4])), 2);
        computed(&mut bm, 4, &[6, 6]);
        assert_eq!(bm.hit_tokens(&bm.lookup(&[1, 2, 3, 4])), 0);
        assert!(!bm.reserve(4, 2, 3, &mut Vec::new()), "the pool is full");
        bm.check().unwrap();
    }

    #[test]
    fn fork_shares_and_a_write_copies_the_shared_block() {
        let mut bm = BlockManager::new(6, 4);
        computed(&mut bm, 1, &[1, 2, 3, 4, 5]); // one full block and a partial one
        bm.fork(1, 2);
        bm.fork(1, 3);
        bm.free(1);
        bm.check().unwrap();
        let mut copies = Vec::new();
        assert!(bm.reserve(2, 5, 6, &mut copies));
        assert_eq!(copies, [(1, 2)]);
        // The last holder writes in place.
        assert!(bm.reserve(3, 5, 6, &mut copies));
        assert_eq!(copies.len(), 1);
        assert_eq!((bm.table(2), bm.table(3)), (&[0, 2][..], &[0, 1][..]));
        bm.check().unwrap();
    }
}
