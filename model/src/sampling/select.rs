//! Ranking tokens by logit (largest first, ties by lower id, NaN left out)
//! without sorting the whole vocabulary: a prefix is put in order only as
//! far as a caller needs it.

/// First extension of the sorted prefix; each later one doubles it.
const FIRST_CHUNK: usize = 64;

/// A token packed so that ascending `u64` order is rank order: the high
/// word is the logit's total-order key inverted (larger logit first), the
/// low word the token id (lower id first on ties).
fn rank_key(logit: f32, token: u32) -> u64 {
    let bits = logit.to_bits();
    // the transform `f32::total_cmp` uses: ascending u32 order = ascending logit
    let ord = if bits >> 31 == 1 {
        !bits
    } else {
        bits | 0x8000_0000
    };
    (u64::from(!ord) << 32) | u64::from(token)
}

fn token_of(key: u64) -> u32 {
    key as u32
}

/// The non-NaN tokens of a logits row as rank keys; `keys[..sorted]` are
/// the best `sorted` tokens in rank order and every later entry ranks
/// below them.
pub(super) struct Ranked {
    keys: Vec<u64>,
    sorted: usize,
    truncated: bool,
}

impl Ranked {
    pub(super) fn new(logits: &[f32]) -> Self {
        let keys = logits
            .iter()
            .zip(0u32..)
            .filter(|(v, _)| !v.is_nan())
            .map(|(&v, i)| rank_key(v, i))
            .collect();
        Ranked {
            keys,
            sorted: 0,
            truncated: false,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether [`Ranked::keep_top`] dropped any token.
    pub(super) fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// Whether every candidate is already in rank order.
    pub(super) fn is_sorted(&self) -> bool {
        self.sorted == self.keys.len()
    }

    /// Drops all but the `k` best tokens and puts those in order.
    pub(super) fn keep_top(&mut self, k: usize) {
        if k >= self.keys.len() {
            return;
        }
        self.extend_sorted(k);
        self.keys.truncate(k);
        self.truncated = true;
    }

    /// The `n`-th best token (0-based), ordering more of the prefix if
    /// needed; `None` past the end.
    pub(super) fn at(&mut self, n: usize) -> Option<u32> {
        if n >= self.keys.len() {
            return None;
        }
        if n >= self.sorted {
            let want = (n + 1).max(2 * self.sorted).max(FIRST_CHUNK);
            self.extend_sorted(want.min(self.keys.len()));
        }
        self.keys.get(n).copied().map(token_of)
    }

    /// Every candidate, in no particular (but deterministic) order.
    pub(super) fn iter_unordered(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.iter().copied().map(token_of)
    }

    /// Orders, in one partition and one sort, every not yet ordered token
    /// for which `upper` holds. `upper` must hold for every token ranking
    /// above one it holds for (e.g. "logit >= threshold").
    pub(super) fn sort_where(&mut self, upper: impl Fn(u32) -> bool) {
        let tail = &mut self.keys[self.sorted..];
        let mut front = 0;
        for i in 0..tail.len() {
            if upper(token_of(tail[i])) {
                tail.swap(front, i);
                front += 1;
            }
        }
        tail[..front].sort_unstable();
        self.sorted += front;
    }

    /// Makes `keys[..upto]` the best `upto` tokens in rank order.
    fn extend_sorted(&mut self, upto: usize) {
        if upto <= self.sorted {
            return;
        }
        let tail = &mut self.keys[self.sorted..];
        let need = upto - self.sorted;
        if need < tail.len() {
            tail.select_nth_unstable(need - 1);
        }
        tail[..need].sort_unstable();
        self.sorted = upto;
    }
}

/// The `n` best tokens of `logits` in rank order (fewer if the row has
/// fewer non-NaN entries).
pub(super) fn top_n(logits: &[f32], n: usize) -> Vec<u32> {
    if n == 0 {
        return Vec::new();
    }
    let mut ranked = Ranked::new(logits);
    ranked.keep_top(n);
    let upto = ranked.len().min(n);
    ranked.extend_sorted(upto);
    ranked.iter_unordered().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_keys_order_like_total_cmp_then_id() {
        let vals = [
            3.0f32,
            -0.0,
            0.0,
            -1.5,
            f32::INFINITY,
            f32::NEG_INFINITY,
            3.0,
            1e-30,
            -1e-30,
        ];
        let mut by_key: Vec<u32> = (0..vals.len() as u32).collect();
        by_key.sort_by_key(|&i| rank_key(vals[i as usize], i));
        let mut by_cmp: Vec<u32> = (0..vals.len() as u32).collect();
        by_cmp.sort_by(|&a, &b| {
            vals[b as usize]
                .total_cmp(&vals[a as usize])
                .then(a.cmp(&b))
        });
        assert_eq!(by_key, by_cmp);
    }

    #[test]
    fn lazy_prefix_and_sort_where_agree_with_a_full_sort() {
        let vals: Vec<f32> = (0..5000u32)
            .map(|i| ((i * 7919) % 613) as f32 * 0.01)
            .collect();
        let mut want: Vec<u32> = (0..5000).collect();
        want.sort_by(|&a, &b| {
            vals[b as usize]
                .total_cmp(&vals[a as usize])
                .then(a.cmp(&b))
        });
        let mut r = Ranked::new(&vals);
        r.sort_where(|t| vals[t as usize] >= 5.0);
        assert!(r.sorted > 0 && !r.is_sorted());
        let got: Vec<u32> = (0..5000).filter_map(|n| r.at(n)).collect();
        assert_eq!(got, want);
        assert_eq!(top_n(&vals, 10), want[..10]);
    }
}
