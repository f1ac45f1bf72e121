//! Paged KV-cache block allocation and the prefix cache.
//!
//! Workers hold the KV memory; the coordinator owns which block belongs to
//! which sequence and sends each sequence's block table with every step.
//! Every block is in exactly one of three places:
//!
//! - **free**: never used, or released while not in the prefix cache
//!   (a stack, so recently freed blocks are reused first);
//! - **in use**: referenced by at least one sequence (`refcount > 0`);
//! - **evictable**: unreferenced but still registered in the prefix cache,
//!   kept in an LRU list (an intrusive doubly linked list over block ids)
//!   so a later request with the same prefix can reuse it, and evicted
//!   least recently released first when no free block is left.
//!
//! Allocation and release are O(1) per block; a prefix lookup is O(blocks).

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};

/// Chained hash of a full block: keyed with a per-process random secret
/// (SipHash via [`RandomState`], plus a random salt from `rand`), over
/// (parent hash, the block's tokens) so that clients cannot craft collisions
/// and equal hashes imply equal full prefixes (with overwhelming probability).
pub type BlockHash = u64;

/// Counters of the block pool and the prefix cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KvStats {
    pub total: usize,
    /// Allocatable now: unused + cached-but-unreferenced.
    pub free: usize,
    /// Blocks with refcount > 0.
    pub in_use: usize,
    /// Blocks registered in the prefix cache (referenced or not).
    pub cached: usize,
    /// Prompt tokens passed to [`BlockManager::acquire_prefix`].
    pub prefix_queries: u64,
    /// Tokens found in the prefix cache.
    pub prefix_hits: u64,
}

/// The cached prefix found by [`BlockManager::acquire_prefix`]; the caller
/// holds one reference on each block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixHit {
    pub blocks: Vec<u32>,
    pub hashes: Vec<BlockHash>,
    /// `blocks.len() * block_size`.
    pub tokens: usize,
}

/// A release that would corrupt the pool; nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvError {
    /// The block id is not in `0..total`.
    OutOfRange { block: u32, total: usize },
    /// The block has no reference left to drop (double release).
    NotReferenced { block: u32 },
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvError::OutOfRange { block, total } => {
                write!(f, "KV block {block} is out of range (pool of {total})")
            }
            KvError::NotReferenced { block } => {
                write!(f, "KV block {block} released without a reference")
            }
        }
    }
}

impl std::error::Error for KvError {}

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Free,
    InUse,
    Evictable,
}

/// LRU of evictable blocks: head is the least recently released.
struct Lru {
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    len: usize,
}

impl Lru {
    fn new(n: usize) -> Self {
        Lru {
            prev: vec![NIL; n],
            next: vec![NIL; n],
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    fn push_back(&mut self, b: u32) {
        let i = b as usize;
        self.prev[i] = self.tail;
        self.next[i] = NIL;
        if self.tail == NIL {
            self.head = b;
        } else {
            self.next[self.tail as usize] = b;
        }
        self.tail = b;
        self.len += 1;
    }

    fn remove(&mut self, b: u32) {
        let i = b as usize;
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[i] = NIL;
        self.next[i] = NIL;
        self.len -= 1;
    }

    fn pop_front(&mut self) -> Option<u32> {
        let b = self.head;
        if b == NIL {
            return None;
        }
        self.remove(b);
        Some(b)
    }
}

/// Owns the paged KV cache's block allocation and the prefix cache.
pub struct BlockManager {
    block_size: usize,
    prefix_caching: bool,
    keys: RandomState,
    salt: u64,
    refcount: Vec<u32>,
    slot: Vec<Slot>,
    /// The hash a block is registered under in `cache`, if any.
    hash_of: Vec<Option<BlockHash>>,
    cache: HashMap<BlockHash, u32>,
    free: Vec<u32>,
    lru: Lru,
    in_use: usize,
    prefix_queries: u64,
    prefix_hits: u64,
}

impl fmt::Debug for BlockManager {
    /// Counters only: never prints the hashing secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockManager")
            .field("block_size", &self.block_size)
            .field("prefix_caching", &self.prefix_caching)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl BlockManager {
    /// A pool of `num_blocks` blocks of `block_size` tokens, all free.
    ///
    /// # Panics
    /// If `block_size` is 0 or `num_blocks` does not fit block ids below
    /// `u32::MAX` — both configuration errors caught at startup.
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        assert!(block_size > 0, "KV block size must be positive");
        assert!(
            num_blocks < NIL as usize,
            "too many KV blocks: {num_blocks}"
        );
        BlockManager {
            block_size,
            prefix_caching,
            keys: RandomState::new(),
            salt: rand::random(),
            refcount: vec![0; num_blocks],
            slot: vec![Slot::Free; num_blocks],
            hash_of: vec![None; num_blocks],
            cache: HashMap::new(),
            free: (0..num_blocks as u32).rev().collect(),
            lru: Lru::new(num_blocks),
            in_use: 0,
            prefix_queries: 0,
            prefix_hits: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn stats(&self) -> KvStats {
        KvStats {
            total: self.refcount.len(),
            free: self.free.len() + self.lru.len,
            in_use: self.in_use,
            cached: self.cache.len(),
            prefix_queries: self.prefix_queries,
            prefix_hits: self.prefix_hits,
        }
    }

    /// The current number of references on `block` (0 when out of range).
    pub fn refcount(&self, block: u32) -> u32 {
        self.refcount.get(block as usize).copied().unwrap_or(0)
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// The keyed hash of a block given its parent's hash (`None` for the
    /// first block of a sequence).
    pub fn hash_block(&self, parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
        let mut h = self.keys.build_hasher();
        h.write_u64(self.salt);
        match parent {
            None => h.write_u8(0),
            Some(p) => {
                h.write_u8(1);
                h.write_u64(p);
            }
        }
        tokens.hash(&mut h); // length-prefixed
        h.finish()
    }

    /// Longest run of full blocks at the start of `tokens` found in the
    /// prefix cache, limited to `max_tokens` tokens (the scheduler passes
    /// `prompt_len - 1` so that at least one token is computed). Takes a
    /// reference on each returned block. With prefix caching off: empty, and
    /// the counters are left alone. Otherwise `prefix_queries` grows by
    /// `tokens.len()` and `prefix_hits` by the tokens found.
    pub fn acquire_prefix(&mut self, tokens: &[u32], max_tokens: usize) -> PrefixHit {
        let mut hit = PrefixHit::default();
        if !self.prefix_caching {
            return hit;
        }
        let limit = tokens.len().min(max_tokens);
        let mut parent = None;
        for chunk in tokens[..limit].chunks_exact(self.block_size) {
            let h = self.hash_block(parent, chunk);
            let Some(&b) = self.cache.get(&h) else { break };
            hit.blocks.push(b);
            hit.hashes.push(h);
            parent = Some(h);
        }
        for &b in &hit.blocks {
            self.take_ref(b);
        }
        hit.tokens = hit.blocks.len() * self.block_size;
        self.prefix_queries += tokens.len() as u64;
        self.prefix_hits += hit.tokens as u64;
        hit
    }

    fn take_ref(&mut self, b: u32) {
        let i = b as usize;
        if self.slot[i] == Slot::Evictable {
            self.lru.remove(b);
        }
        if self.slot[i] != Slot::InUse {
            self.slot[i] = Slot::InUse;
            self.in_use += 1;
        }
        self.refcount[i] += 1;
    }

    /// One fresh block with refcount 1. Takes a free block if any is left,
    /// else evicts the least recently released cached unreferenced block
    /// (dropping its cache entry). `None` when every block is referenced.
    pub fn allocate(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let b = self.lru.pop_front()?;
                self.slot[b as usize] = Slot::Free;
                if let Some(h) = self.hash_of[b as usize].take() {
                    self.cache.remove(&h);
                }
                b
            }
        };
        self.take_ref(b);
        Some(b)
    }

    /// Registers a now-full, referenced block in the prefix cache under
    /// `hash`. A no-op when caching is off, when the block is out of range,
    /// unreferenced or already registered, or when `hash` is already cached
    /// by another block (the existing entry is kept).
    pub fn register(&mut self, block: u32, hash: BlockHash) {
        let i = block as usize;
        if !self.prefix_caching
            || self.slot.get(i) != Some(&Slot::InUse)
            || self.hash_of[i].is_some()
            || self.cache.contains_key(&hash)
        {
            return;
        }
        self.cache.insert(hash, block);
        self.hash_of[i] = Some(hash);
    }

    /// Drops one reference per listed block (a block listed twice loses
    /// two). A block reaching 0 becomes free if uncached, or evictable if
    /// cached; the blocks of one call enter the LRU last-to-first, so a
    /// sequence's tail is evicted before the prefix it shares with others.
    /// Releasing an out-of-range or unreferenced block returns `Err` and
    /// changes nothing.
    pub fn release(&mut self, blocks: &[u32]) -> Result<(), KvError> {
        for (k, &b) in blocks.iter().enumerate() {
            let err = match self.refcount.get_mut(b as usize) {
                Some(rc) if *rc > 0 => {
                    *rc -= 1;
                    continue;
                }
                Some(_) => KvError::NotReferenced { block: b },
                None => KvError::OutOfRange {
                    block: b,
                    total: self.slot.len(),
                },
            };
            for &p in &blocks[..k] {
                self.refcount[p as usize] += 1;
            }
            return Err(err);
        }
        for &b in blocks.iter().rev() {
            let i = b as usize;
            if self.refcount[i] > 0 || self.slot[i] != Slot::InUse {
                continue;
            }
            self.in_use -= 1;
            if self.hash_of[i].is_some() {
                self.slot[i] = Slot::Evictable;
                self.lru.push_back(b);
            } else {
                self.slot[i] = Slot::Free;
                self.free.push(b);
            }
        }
        Ok(())
    }

    /// Checks internal invariants (refcounts, free and evictable lists,
    /// cache maps consistent, no block in two places).
    pub fn check_invariants(&self) -> Result<(), String> {
        let n = self.slot.len();
        if self.refcount.len() != n || self.hash_of.len() != n || self.lru.prev.len() != n {
            return Err("per-block tables disagree in length".into());
        }
        let mut seen = vec![false; n];
        self.check_free_list(&mut seen)?;
        self.check_lru(&mut seen)?;
        let mut in_use = 0;
        for (i, &s) in self.slot.iter().enumerate() {
            let rc = self.refcount[i];
            if (s == Slot::InUse) != (rc > 0) {
                return Err(format!("block {i}: slot {s:?} with refcount {rc}"));
            }
            if s == Slot::InUse {
                in_use += 1;
            } else if !seen[i] {
                return Err(format!("block {i} is {s:?} but in no list"));
            }
        }
        if in_use != self.in_use {
            return Err(format!("in_use counter {} != {in_use}", self.in_use));
        }
        self.check_cache()
    }

    fn check_free_list(&self, seen: &mut [bool]) -> Result<(), String> {
        for &b in &self.free {
            let i = b as usize;
            if i >= seen.len() || std::mem::replace(&mut seen[i], true) {
                return Err(format!("free block {b} out of range or listed twice"));
            }
            if self.slot[i] != Slot::Free || self.hash_of[i].is_some() {
                return Err(format!(
                    "free-listed block {b} is {:?} or cached",
                    self.slot[i]
                ));
            }
        }
        Ok(())
    }

    fn check_lru(&self, seen: &mut [bool]) -> Result<(), String> {
        let (mut b, mut prev, mut count) = (self.lru.head, NIL, 0);
        while b != NIL {
            let i = b as usize;
            if i >= seen.len() || std::mem::replace(&mut seen[i], true) {
                return Err(format!("LRU block {b} out of range or listed twice"));
            }
            if self.lru.prev[i] != prev {
                return Err(format!("LRU block {b}: broken back link"));
            }
            if self.slot[i] != Slot::Evictable || self.hash_of[i].is_none() {
                return Err(format!("LRU block {b} is {:?} or uncached", self.slot[i]));
            }
            count += 1;
            prev = b;
            b = self.lru.next[i];
        }
        if prev != self.lru.tail || count != self.lru.len {
            return Err(format!(
                "LRU tail or length wrong ({count} vs {})",
                self.lru.len
            ));
        }
        Ok(())
    }

    fn check_cache(&self) -> Result<(), String> {
        if !self.prefix_caching && !self.cache.is_empty() {
            return Err("prefix cache populated with caching off".into());
        }
        for (&h, &b) in &self.cache {
            if self.hash_of.get(b as usize) != Some(&Some(h)) {
                return Err(format!("cache entry {h:#x} -> {b} not mirrored"));
            }
        }
        let registered = self.hash_of.iter().filter(|h| h.is_some()).count();
        if registered != self.cache.len() {
            return Err(format!(
                "{registered} blocks hashed, {} cached",
                self.cache.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
