use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn ok(bm: &BlockManager) {
    if let Err(e) = bm.check_invariants() {
        panic!("invariant broken: {e}");
    }
    let s = bm.stats();
    assert_eq!(s.free + s.in_use, s.total);
}

fn snapshot(bm: &BlockManager) -> (KvStats, Vec<u32>) {
    let n = bm.stats().total as u32;
    (bm.stats(), (0..n).map(|b| bm.refcount(b)).collect())
}

struct Seq {
    tokens: Vec<u32>,
    blocks: Vec<u32>,
    parent: Option<BlockHash>,
    hit: usize,
}

/// Drives a manager as the scheduler would. `content[b]` shadows what
/// block `b`'s memory holds (the full prefix up to its end), to check
/// that every prefix hit hands out the right KV.
struct Sim {
    bm: BlockManager,
    content: Vec<Vec<u32>>,
}

impl Sim {
    fn new(blocks: usize, block_size: usize, caching: bool) -> Self {
        let bm = BlockManager::new(blocks, block_size, caching);
        Sim {
            bm,
            content: vec![Vec::new(); blocks],
        }
    }

    /// Reuses the cached prefix, then computes the rest of the prompt;
    /// on exhaustion releases what it took and returns `None`.
    fn admit(&mut self, prompt: &[u32]) -> Option<Seq> {
        let hit = self
            .bm
            .acquire_prefix(prompt, prompt.len().saturating_sub(1));
        for (j, &b) in hit.blocks.iter().enumerate() {
            let want = &prompt[..(j + 1) * self.bm.block_size()];
            assert_eq!(self.content[b as usize], want, "wrong KV in block {b}");
        }
        let mut s = Seq {
            tokens: prompt[..hit.tokens].to_vec(),
            parent: hit.hashes.last().copied(),
            blocks: hit.blocks,
            hit: hit.tokens,
        };
        if prompt[s.hit..].iter().all(|&t| self.decode(&mut s, t)) {
            return Some(s);
        }
        self.bm.release(&s.blocks).unwrap(); // preempted
        None
    }

    /// Appends one token, allocating and registering blocks as needed.
    fn decode(&mut self, s: &mut Seq, tok: u32) -> bool {
        let bs = self.bm.block_size();
        if s.tokens.len() == s.blocks.len() * bs {
            match self.bm.allocate() {
                Some(b) => s.blocks.push(b),
                None => return false,
            }
        }
        s.tokens.push(tok);
        if s.tokens.len() == s.blocks.len() * bs {
            let b = s.blocks[s.blocks.len() - 1];
            self.content[b as usize] = s.tokens.clone();
            let h = self
                .bm
                .hash_block(s.parent, &s.tokens[s.tokens.len() - bs..]);
            self.bm.register(b, h);
            s.parent = Some(h);
        }
        true
    }
}

#[test]
fn kv_allocation_until_exhaustion_and_release() {
    let mut bm = BlockManager::new(4, 16, false);
    let got: Vec<u32> = (0..4).map_while(|_| bm.allocate()).collect();
    assert_eq!(got, vec![0, 1, 2, 3]);
    assert_eq!(bm.allocate(), None);
    assert_eq!((bm.stats().free, bm.stats().in_use), (0, 4));
    bm.release(&got[1..2]).unwrap();
    ok(&bm);
    assert_eq!(bm.allocate(), Some(1));
    bm.release(&got).unwrap();
    ok(&bm);
    assert_eq!((bm.stats().free, bm.stats().in_use), (4, 0));
    let sizes = [0, 16, 17].map(|t| bm.blocks_for(t));
    assert_eq!(sizes, [0, 1, 2]);
}

#[test]
fn kv_shared_prefix_refcounts() {
    let mut sim = Sim::new(16, 4, true);
    let a: Vec<u32> = (0..10).collect();
    let ta = sim.admit(&a).unwrap().blocks;
    assert_eq!((ta.len(), sim.bm.stats().cached), (3, 2));
    let b = sim.admit(&[&a[..8], &[99, 98, 97]].concat()).unwrap();
    assert_eq!((b.hit, &b.blocks[..2]), (8, &ta[..2]));
    assert_ne!(b.blocks[2], ta[2]);
    let bm = &mut sim.bm;
    assert_eq!((bm.refcount(ta[0]), bm.refcount(ta[1])), (2, 2));
    bm.release(&ta).unwrap();
    ok(bm);
    assert_eq!((bm.refcount(ta[0]), bm.refcount(ta[2])), (1, 0));
    assert_eq!(bm.stats().in_use, 3);
    bm.release(&b.blocks).unwrap();
    ok(bm);
    let s = bm.stats();
    assert_eq!((s.free, s.in_use, s.cached), (16, 0, 2));
    assert_eq!((s.prefix_queries, s.prefix_hits), (21, 8));
    let again = sim.admit(&a).unwrap(); // the evictable prefix is still found
    assert_eq!(again.blocks[..2], ta[..2]);
}

#[test]
fn kv_prefix_lookup_full_blocks_limit_and_misses() {
    let mut sim = Sim::new(32, 4, true);
    let p: Vec<u32> = (0..13).collect();
    let t = sim.admit(&p).unwrap().blocks;
    let mut lookup = |toks: &[u32], max: usize| {
        let hit = sim.bm.acquire_prefix(toks, max);
        sim.bm.release(&hit.blocks).unwrap();
        ok(&sim.bm);
        assert_eq!(hit.tokens, hit.blocks.len() * 4);
        assert_eq!(hit.blocks, t[..hit.blocks.len()]);
        hit.tokens
    };
    assert_eq!(lookup(&p, usize::MAX), 12);
    assert_eq!(lookup(&p[..12], 11), 8);
    assert_eq!(lookup(&p[..11], usize::MAX), 8);
    assert_eq!(lookup(&p, 3), 0);
    for (pos, want) in [(9, 8), (4, 4), (3, 0), (0, 0)] {
        let mut q = p.clone();
        q[pos] = 1000;
        assert_eq!(lookup(&q, usize::MAX), want, "changed token {pos}");
    }
    // Block 1's tokens at the start of a prompt: the chain differs.
    assert_eq!(lookup(&p[4..], usize::MAX), 0);
}

#[test]
fn kv_eviction_prefers_least_recently_released() {
    let mut sim = Sim::new(3, 2, true);
    let prompts = [[1, 2, 0], [3, 4, 0], [5, 6, 0]];
    let t: Vec<u32> = prompts
        .iter()
        .map(|p| sim.admit(&p[..2]).unwrap().blocks[0])
        .collect();
    let bm = &mut sim.bm;
    for b in [t[1], t[0], t[2]] {
        bm.release(&[b]).unwrap();
    }
    assert_eq!(bm.stats().cached, 3);
    assert_eq!(bm.allocate(), Some(t[1]));
    ok(bm);
    assert_eq!(bm.stats().cached, 2);
    assert_eq!(bm.acquire_prefix(&prompts[1], 2).tokens, 0);
    assert_eq!(bm.acquire_prefix(&prompts[0], 2).blocks, [t[0]]);
    // Prompt 0's block is referenced again, so prompt 2's goes next.
    assert_eq!(bm.allocate(), Some(t[2]));
    assert_eq!(bm.allocate(), None);
    ok(bm);
    // Within one release, a sequence's tail is evicted before its head.
    let mut sim = Sim::new(2, 2, true);
    let t = sim.admit(&[1, 2, 3, 4]).unwrap().blocks;
    sim.bm.release(&t).unwrap();
    assert_eq!(sim.bm.allocate(), Some(t[1]));
    assert_eq!(sim.bm.acquire_prefix(&[1, 2, 3, 4, 5], 4).blocks, t[..1]);
}

#[test]
fn kv_secret_differs_per_manager_and_is_stable() {
    let (a, b) = (BlockManager::new(1, 4, true), BlockManager::new(1, 4, true));
    let toks = [1, 2, 3, 4];
    let h = a.hash_block(None, &toks);
    assert_eq!(h, a.hash_block(None, &toks));
    assert_ne!(h, b.hash_block(None, &toks));
    assert_ne!(a.hash_block(Some(h), &toks), h);
    assert_ne!(
        a.hash_block(Some(h), &toks),
        a.hash_block(Some(h ^ 1), &toks)
    );
    assert_ne!(a.hash_block(None, &toks[..3]), h);
    assert!(!format!("{a:?}").contains(&a.salt.to_string()));
}

#[test]
fn kv_bad_release_is_an_error_and_changes_nothing() {
    let mut sim = Sim::new(8, 2, true);
    let t = sim.admit(&[1, 2, 3, 4, 5]).unwrap().blocks;
    let bm = &mut sim.bm;
    bm.release(&t[2..]).unwrap();
    let before = snapshot(bm);
    let not_ref = |block| Err(KvError::NotReferenced { block });
    assert_eq!(bm.release(&t[2..]), not_ref(t[2]));
    assert_eq!(bm.release(&[t[0], t[1], t[2]]), not_ref(t[2]));
    assert_eq!(bm.release(&[t[0], t[0]]), not_ref(t[0]));
    let e = bm.release(&[t[1], 8]);
    assert_eq!(e, Err(KvError::OutOfRange { block: 8, total: 8 }));
    assert!(e.unwrap_err().to_string().contains("out of range"));
    assert_eq!(snapshot(bm), before);
    ok(bm);
    bm.release(&t[..2]).unwrap();
    assert_eq!(bm.stats().in_use, 0);
    ok(bm);
}

#[test]
fn kv_prefix_caching_off_never_hits() {
    let mut sim = Sim::new(8, 2, false);
    let p = [1, 2, 3, 4, 5];
    let t = sim.admit(&p).unwrap().blocks;
    assert_eq!(sim.bm.stats().cached, 0);
    sim.bm.release(&t).unwrap();
    assert_eq!(sim.bm.acquire_prefix(&p, 4), PrefixHit::default());
    let s = sim.bm.stats();
    assert_eq!(
        (s.cached, s.prefix_queries, s.prefix_hits, s.free),
        (0, 0, 0, 8)
    );
    ok(&sim.bm);
}

/// Sequences drawn from a few shared prompts (tiny vocabulary, so equal
/// blocks recur under different prefixes) are admitted, decoded,
/// preempted on exhaustion and released at random; bad releases are
/// tried too. Invariants are checked after every operation.
fn storm(seed: u64, caching: bool) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sim = Sim::new(48, 4, caching);
    let mut bases = vec![vec![0u32; 40]; 4];
    bases
        .iter_mut()
        .flatten()
        .for_each(|t| *t = rng.random_range(0..3));
    let mut live: Vec<Seq> = Vec::new();
    for _ in 0..20_000 {
        match rng.random_range(0..10) {
            0..=1 if live.len() < 10 => {
                let base = &bases[rng.random_range(0..bases.len())];
                let mut prompt = base[..rng.random_range(1..base.len())].to_vec();
                prompt.extend((0..rng.random_range(0..6)).map(|_| rng.random_range(0..3)));
                live.extend(sim.admit(&prompt));
            }
            2..=6 if !live.is_empty() => {
                let i = rng.random_range(0..live.len());
                if !sim.decode(&mut live[i], rng.random_range(0..3)) {
                    sim.bm.release(&live.swap_remove(i).blocks).unwrap();
                }
            }
            7..=8 if !live.is_empty() => {
                let s = live.swap_remove(rng.random_range(0..live.len()));
                sim.bm.release(&s.blocks).unwrap();
            }
            _ => {
                let b = rng.random_range(0..50);
                if sim.bm.refcount(b) == 0 {
                    let before = snapshot(&sim.bm);
                    let mut bad = live.first().map(|s| s.blocks.clone()).unwrap_or_default();
                    bad.push(b);
                    assert!(sim.bm.release(&bad).is_err());
                    assert_eq!(snapshot(&sim.bm), before);
                }
            }
        }
        ok(&sim.bm);
    }
    let s = sim.bm.stats();
    assert!(caching == (s.prefix_hits > 0 && s.cached > 0), "{s:?}");
    for s in live.drain(..) {
        sim.bm.release(&s.blocks).unwrap();
        ok(&sim.bm);
    }
    let s = sim.bm.stats();
    assert_eq!((s.free, s.in_use), (s.total, 0));
}

#[test]
fn kv_randomized_storm() {
    for seed in 0..4 {
        storm(seed, true);
    }
    storm(99, false);
}
