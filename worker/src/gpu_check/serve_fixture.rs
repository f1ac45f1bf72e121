//! `weft-gpu-check write-serve-fixture DIR`: the inputs of the end-to-end
//! serving stage of `scripts/gpu-check.sh` (no GPU needed to write them):
//!
//! - `DIR/model/`: a synthetic Hugging Face checkpoint (config.json,
//!   model.safetensors; a small GQA Llama in bf16 with seeded random
//!   weights) and a `tokenizer.json` beside it (a WordLevel model over the
//!   vocabulary: `<unk>`, `<s>`, `</s>`, then `t3` .. `tN`; whitespace
//!   pre-tokenizer), so the coordinator can start on it;
//! - `DIR/prompts.jsonl`: weft-load's `jsonl` dataset, one
//!   `{"prompt_ids", "max_tokens"}` per line, of varied prompt lengths
//!   (several of at least 64 tokens, whose prefill takes the GPU's GEMM
//!   attention path, and one that repeats another's first six KV blocks,
//!   so that the prefix cache can serve part of it).
//!
//! Everything written is read back (the checkpoint through
//! `Checkpoint::open`, the tokenizer through weft's own `Tokenizer`) before
//! the command reports success.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde_json::json;
use weft_kernels::DType;
use weft_model::checkpoint::Checkpoint;
use weft_model::config::Arch;
use weft_model::synthetic::{write_checkpoint, SyntheticSpec};
use weft_model::tokenizer::Tokenizer;

/// Output tokens asked of every prompt.
pub const MAX_TOKENS: u32 = 24;

/// Prompt lengths in tokens; a last prompt is added that shares the first
/// [`SHARED_PREFIX`] tokens of the 128-token one.
const PROMPT_LENS: [usize; 15] = [1, 2, 5, 9, 16, 23, 31, 40, 47, 63, 64, 65, 80, 100, 128];

/// Tokens the last prompt shares with the 128-token one (six blocks of 16).
const SHARED_PREFIX: usize = 96;

/// New tokens of the last prompt after the shared prefix.
const SHARED_TAIL: usize = 40;

/// The special tokens, ids 0, 1 (BOS) and 2 (EOS) as in the synthetic
/// config.json.
const SPECIALS: [&str; 3] = ["<unk>", "<s>", "</s>"];

/// Seed of the prompt token ids.
const PROMPT_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// What [`write`] wrote.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The checkpoint folder (config.json, model.safetensors, tokenizer.json).
    pub model_dir: PathBuf,
    /// weft-load's `jsonl` dataset.
    pub prompts_path: PathBuf,
    /// Prompt lengths in tokens, in file order.
    pub prompt_lens: Vec<usize>,
    /// The model's shape.
    pub spec: SyntheticSpec,
}

/// The synthetic model served: Llama with GQA (8 query heads, 2 K/V heads,
/// head_dim 64), hidden 512, 4 layers, vocabulary 2048, bf16 weights.
/// About 11 M parameters, so a 2-core CPU cluster serves it quickly.
pub fn spec() -> SyntheticSpec {
    SyntheticSpec {
        arch: Arch::Llama,
        hidden_size: 512,
        intermediate_size: 1024,
        num_layers: 4,
        num_heads: 8,
        num_kv_heads: 2,
        vocab_size: 2048,
        rope_theta: 10_000.0,
        rope_scaling: None,
        tie_word_embeddings: false,
        dtype: DType::BF16,
        shards: 1,
        seed: 0x5e7e_f1c5,
    }
}

/// Writes the checkpoint, its tokenizer and the prompts into `dir`
/// (created if needed) and checks that they read back.
pub fn write(dir: &Path) -> Result<Fixture> {
    let spec = spec();
    let model_dir = dir.join("model");
    write_checkpoint(&model_dir, &spec)
        .with_context(|| format!("writing the checkpoint into {}", model_dir.display()))?;
    let tok_path = model_dir.join("tokenizer.json");
    write_json(&tok_path, &tokenizer_json(spec.vocab_size))?;
    verify(&model_dir, &spec)?;

    let vocab = u32::try_from(spec.vocab_size).context("vocabulary size")?;
    let prompts = prompts(vocab);
    let prompts_path = dir.join("prompts.jsonl");
    write_prompts(&prompts_path, &prompts)?;
    Ok(Fixture {
        model_dir,
        prompts_path,
        prompt_lens: prompts.iter().map(Vec::len).collect(),
        spec,
    })
}

/// The name of token `id`.
fn token_name(id: usize) -> String {
    match SPECIALS.get(id) {
        Some(s) => (*s).to_owned(),
        None => format!("t{id}"),
    }
}

/// A Hugging Face `tokenizer.json`: WordLevel over `vocab` tokens,
/// whitespace pre-tokenizer, no decoder (decoding joins tokens with
/// spaces), the three specials as special added tokens.
fn tokenizer_json(vocab: usize) -> serde_json::Value {
    let words: serde_json::Map<String, serde_json::Value> =
        (0..vocab).map(|id| (token_name(id), json!(id))).collect();
    let added: Vec<serde_json::Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(id, content)| {
            json!({
                "id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true,
            })
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": { "type": "Whitespace" },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": words, "unk_token": SPECIALS[0] },
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("serializing JSON")?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Reads the checkpoint back as the coordinator does and checks the
/// tokenizer against the config.
fn verify(model_dir: &Path, spec: &SyntheticSpec) -> Result<()> {
    let ckpt = Checkpoint::open(model_dir)
        .with_context(|| format!("reopening the checkpoint {}", model_dir.display()))?;
    let cfg = ckpt.config();
    ensure!(
        cfg.vocab_size == spec.vocab_size,
        "config.json says vocab_size {}, expected {}",
        cfg.vocab_size,
        spec.vocab_size
    );
    ensure!(
        cfg.bos_token_id == Some(1) && cfg.eos_token_ids == [2],
        "config.json has bos {:?} and eos {:?}, expected 1 and [2]",
        cfg.bos_token_id,
        cfg.eos_token_ids
    );
    let tok_path = ckpt
        .tokenizer_json()
        .context("the checkpoint does not find the tokenizer.json just written")?;
    let tok = Tokenizer::from_hf_file(&tok_path)?;
    ensure!(
        tok.vocab_size() == spec.vocab_size,
        "tokenizer has {} tokens, the model {}",
        tok.vocab_size(),
        spec.vocab_size
    );
    let last = spec.vocab_size - 1;
    let text = format!("t3 t17 t{last}");
    let ids = tok.encode(&text, false)?;
    ensure!(
        ids == [3, 17, last as u32],
        "tokenizer encodes {text:?} as {ids:?}"
    );
    let back = tok.decode(&ids)?;
    ensure!(back == text, "tokenizer decodes {ids:?} as {back:?}");
    ensure!(
        tok.token_to_id(SPECIALS[1]) == Some(1) && tok.token_to_id(SPECIALS[2]) == Some(2),
        "tokenizer: BOS/EOS are not ids 1/2"
    );
    Ok(())
}

/// SplitMix64: a small seeded generator, so the prompts never change.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce5_e9b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The prompts: ordinary token ids (no special token), one per entry of
/// [`PROMPT_LENS`], then one that repeats the 128-token prompt's first
/// [`SHARED_PREFIX`] tokens and adds [`SHARED_TAIL`] of its own.
fn prompts(vocab: u32) -> Vec<Vec<u32>> {
    let first = SPECIALS.len() as u32;
    let span = u64::from(vocab.saturating_sub(first).max(1));
    let mut state = PROMPT_SEED;
    let mut draw = |n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| first + (splitmix64(&mut state) % span) as u32)
            .collect()
    };
    let mut out: Vec<Vec<u32>> = PROMPT_LENS.iter().map(|&n| draw(n)).collect();
    let longest = out
        .iter()
        .max_by_key(|p| p.len())
        .cloned()
        .unwrap_or_default();
    let mut shared: Vec<u32> = longest.iter().take(SHARED_PREFIX).copied().collect();
    shared.extend(draw(SHARED_TAIL));
    out.push(shared);
    out
}

fn write_prompts(path: &Path, prompts: &[Vec<u32>]) -> Result<()> {
    let mut text = Vec::new();
    for p in prompts {
        let line = json!({ "prompt_ids": p, "max_tokens": MAX_TOKENS });
        writeln!(text, "{line}").context("formatting a prompt")?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The command's report: what was written, one line each.
pub fn describe(f: &Fixture) -> String {
    let s = &f.spec;
    let long = f.prompt_lens.iter().filter(|&&n| n >= 64).count();
    format!(
        "checkpoint {}: llama, hidden {}, {} layers, {} heads / {} KV heads, intermediate {}, \
         vocab {}, {:?}; tokenizer.json (WordLevel)\n\
         prompts {}: {} prompts of {}..{} tokens ({} of >= 64), max_tokens {}",
        f.model_dir.display(),
        s.hidden_size,
        s.num_layers,
        s.num_heads,
        s.num_kv_heads,
        s.intermediate_size,
        s.vocab_size,
        s.dtype,
        f.prompts_path.display(),
        f.prompt_lens.len(),
        f.prompt_lens.iter().min().copied().unwrap_or(0),
        f.prompt_lens.iter().max().copied().unwrap_or(0),
        long,
        MAX_TOKENS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_fixed_ordinary_and_share_one_prefix() {
        let a = prompts(2048);
        assert_eq!(a, prompts(2048));
        assert_eq!(a.len(), PROMPT_LENS.len() + 1);
        assert!(a.iter().flatten().all(|&id| (3..2048).contains(&id)));
        let last = &a[a.len() - 1];
        assert_eq!(last.len(), SHARED_PREFIX + SHARED_TAIL);
        assert_eq!(
            last[..SHARED_PREFIX],
            a[PROMPT_LENS.len() - 1][..SHARED_PREFIX]
        );
        assert!(a.iter().filter(|p| p.len() >= 64).count() >= 4);
    }

    #[test]
    fn writes_a_fixture_that_reads_back() {
        let dir = std::env::temp_dir().join(format!("weft-serve-fixture-{}", std::process::id()));
        let f = write(&dir).expect("fixture");
        let lines = std::fs::read_to_string(&f.prompts_path).expect("prompts");
        assert_eq!(lines.lines().count(), PROMPT_LENS.len() + 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
