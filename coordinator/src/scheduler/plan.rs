//! Planning one step (continuous batching with chunked prefill, block
//! allocation and preemption) and applying its results.

use weft_proto::cluster::v1 as pb;

use super::seq::{Finish, Seq};
use super::Scheduler;

/// One sequence's part of a planned step.
pub(super) struct Item {
    /// Index into `running` (stable until the step is applied).
    index: usize,
    n_tokens: usize,
    sample: bool,
}

pub(super) struct Step {
    pub request: pb::StepRequest,
    items: Vec<Item>,
}

impl Scheduler {
    /// Plans the next step: running sequences first (oldest first: decodes
    /// and prefill chunks), then admissions from the queue, all within the
    /// token budget. None when nothing can run.
    pub(super) fn plan(&mut self) -> Option<Step> {
        let mut budget = self.cfg.max_batched_tokens;
        let mut items: Vec<Item> = Vec::new();
        let mut i = 0;
        while i < self.running.len() && budget > 0 && items.len() < self.cfg.max_num_seqs {
            let s = &self.running[i];
            let n = (s.known_len() - s.computed).min(budget);
            if !self.grow_blocks(i, s.computed + n) {
                // `i` itself was preempted (it was the youngest).
                break;
            }
            let s = &self.running[i];
            items.push(Item {
                index: i,
                n_tokens: n,
                sample: s.computed + n == s.known_len(),
            });
            budget -= n;
            i += 1;
        }
        while budget > 0
            && items.len() < self.cfg.max_num_seqs
            && self.running.len() < self.cfg.max_num_seqs
        {
            let Some(item) = self.admit(budget) else {
                break;
            };
            budget -= item.n_tokens;
            items.push(item);
        }
        if items.is_empty() {
            return None;
        }
        Some(self.build(items))
    }

    /// Makes sure running[i] has blocks for `tokens` positions, preempting
    /// the youngest other sequences as needed. False if running[i] had to
    /// be preempted itself.
    fn grow_blocks(&mut self, i: usize, tokens: usize) -> bool {
        let need = self.kv.blocks_for(tokens);
        while self.running[i].blocks.len() < need {
            if let Some(b) = self.kv.allocate() {
                self.running[i].blocks.push(b);
                continue;
            }
            let youngest = self.running.len() - 1;
            self.preempt(youngest);
            if youngest == i {
                return false;
            }
        }
        true
    }

    /// Frees a running sequence's blocks and requeues it at the front; it
    /// will be recomputed from its prompt and the tokens already streamed.
    fn preempt(&mut self, index: usize) {
        let mut s = self.running.remove(index);
        if let Err(e) = self.kv.release(&s.blocks) {
            tracing::error!(seq = s.id, error = %e, "KV block accounting error");
        }
        s.blocks.clear();
        s.hashes.clear();
        s.computed = 0;
        s.preemptions += 1;
        self.stats.preemptions += 1;
        tracing::debug!(seq = s.id, "preempted for lack of KV blocks");
        self.waiting.push_front(s);
    }

    /// Admits the first waiting sequence if its first chunk fits.
    fn admit(&mut self, budget: usize) -> Option<Item> {
        let s = self.waiting.front()?;
        let known = s.known_len();
        let hit = self.kv.acquire_prefix(&s.tokens(), known - 1);
        let n = (known - hit.tokens).min(budget);
        let need = self
            .kv
            .blocks_for(hit.tokens + n)
            .saturating_sub(hit.blocks.len());
        if self.kv.stats().free < need {
            if let Err(e) = self.kv.release(&hit.blocks) {
                tracing::error!(error = %e, "KV block accounting error");
            }
            return None;
        }
        let mut s = self.waiting.pop_front()?;
        s.blocks = hit.blocks;
        s.hashes = hit.hashes;
        for _ in 0..need {
            // Cannot fail: `need` blocks were free above.
            if let Some(b) = self.kv.allocate() {
                s.blocks.push(b);
            }
        }
        s.admitted(hit.tokens);
        let sample = hit.tokens + n == known;
        self.running.push(s);
        Some(Item {
            index: self.running.len() - 1,
            n_tokens: n,
            sample,
        })
    }

    fn build(&mut self, items: Vec<Item>) -> Step {
        let seqs = items
            .iter()
            .map(|it| {
                let s = &self.running[it.index];
                pb::SequenceStep {
                    seq_id: s.id,
                    tokens: (s.computed..s.computed + it.n_tokens)
                        .map(|p| s.token_at(p))
                        .collect(),
                    start_pos: s.computed as u32,
                    sample: it.sample,
                    sampling: Some(s.req.sampling),
                    block_table: s.blocks.clone(),
                    prompt_len: s.req.prompt.len() as u32,
                    history: if s.needs_history {
                        (0..s.computed).map(|p| s.token_at(p)).collect()
                    } else {
                        Vec::new()
                    },
                    traceparent: match (&s.req.traceparent, s.announce) {
                        (Some(t), true) => t.clone(),
                        _ => String::new(),
                    },
                }
            })
            .collect();
        let request = pb::StepRequest {
            step_id: self.next_step,
            seqs,
            release_seq_ids: std::mem::take(&mut self.released),
            debug_return_logits: false,
        };
        self.next_step += 1;
        Step { request, items }
    }

    /// Applies a step's answer: advances each sequence, registers newly
    /// full blocks in the prefix cache, streams sampled tokens, and retires
    /// finished sequences.
    pub(super) fn apply(&mut self, step: Step, resp: pb::StepResponse) {
        self.stats.steps += 1;
        let mut sampled = resp.tokens.iter();
        let mut done: Vec<(usize, Finish)> = Vec::new();
        let max_len = self.cfg.max_model_len;
        for it in &step.items {
            self.stats.computed_tokens += it.n_tokens as u64;
            // The step's sequences are the running ones unless a command
            // ended them meanwhile (then the step is abandoned first).
            let Some(s) = self.running.get_mut(it.index) else {
                tracing::error!(
                    index = it.index,
                    "a step answered for a sequence no longer running"
                );
                return;
            };
            s.computed += it.n_tokens;
            s.needs_history = false;
            s.announce = false;
            register_full_blocks(&mut self.kv, s);
            if !it.sample {
                continue;
            }
            let id = s.id;
            let Some(t) = sampled.next().filter(|t| t.seq_id == id) else {
                self.fail_group(format!(
                    "step {} did not return a token for sequence {id}",
                    resp.step_id
                ));
                return;
            };
            self.stats.generated_tokens += 1;
            if let Some(why) = s.accept(t, &self.cfg.eos_token_ids, &self.tokenizer, max_len) {
                done.push((it.index, why));
            }
        }
        done.sort_by_key(|d| std::cmp::Reverse(d.0));
        for (index, why) in done {
            let mut s = self.running.remove(index);
            s.finish(&why);
            self.free(&s);
        }
    }
}

/// Registers every newly full block of `s` in the prefix cache.
fn register_full_blocks(kv: &mut crate::kv::BlockManager, s: &mut Seq) {
    let bs = kv.block_size();
    let full = (s.computed / bs).min(s.blocks.len());
    while s.hashes.len() < full {
        let b = s.hashes.len();
        let tokens: Vec<u32> = (b * bs..(b + 1) * bs).map(|p| s.token_at(p)).collect();
        let h = kv.hash_block(s.hashes.last().copied(), &tokens);
        kv.register(s.blocks[b], h);
        s.hashes.push(h);
    }
}
