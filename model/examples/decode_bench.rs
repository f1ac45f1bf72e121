//! Batch-1 benchmarks of one rank (TP=1), shaped like llama-bench:
//!
//! - `decode` (the default), like `llama-bench -p 0 -n N`: from an empty
//!   context, generate N tokens one at a time (greedy);
//! - `prefill`, like `llama-bench -p N -n 0`: ONE forward call over N prompt
//!   tokens from position 0 (BOS, then fixed pseudo-random token ids, as
//!   llama-bench uses random ids too).
//!
//! Both report tokens per second (N / time) as the mean and standard
//! deviation over several repetitions, after one warm-up run.
//!
//! cargo run --release -p weft-model --example decode_bench -- MODEL.gguf [threads] [n] [reps] [decode|prefill]

use std::time::Instant;

use weft_model::checkpoint::Checkpoint;
use weft_model::comm::SingleRank;
use weft_model::llama::RankModel;
use weft_model::sampling::argmax;
use weft_model::shard::{read_shard, ShardPlan};

const USAGE: &str = "usage: decode_bench MODEL [threads] [n] [reps] [decode|prefill]";

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Decode,
    Prefill,
}

/// `n` prompt token ids: `bos`, then a fixed xorshift sequence below `vocab`.
fn prompt_tokens(n: usize, bos: u32, vocab: usize) -> Vec<u32> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut tokens = Vec::with_capacity(n);
    if n > 0 {
        tokens.push(bos);
    }
    while tokens.len() < n {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        tokens.push((state % vocab as u64) as u32);
    }
    tokens
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or(USAGE)?;
    let threads: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let n: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let reps: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let mode = match args.get(5).map(String::as_str) {
        None | Some("decode") => Mode::Decode,
        Some("prefill") => Mode::Prefill,
        Some(other) => return Err(format!("unknown mode {other:?}; {USAGE}").into()),
    };
    if n == 0 || reps == 0 {
        return Err(format!("n and reps must be at least 1; {USAGE}").into());
    }
    let ckpt = Checkpoint::open(std::path::Path::new(path))?;
    let plan = ShardPlan::for_checkpoint(&ckpt, 1)?;
    let shard = read_shard(&ckpt, &plan, 0)?;
    let model = RankModel::from_shard(ckpt.config(), &shard)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let bos = ckpt.config().bos_token_id.unwrap_or(1);
    let prompt = prompt_tokens(n, bos, ckpt.config().vocab_size);
    let run = || -> Result<f64, weft_model::llama::ModelError> {
        let mut cache = model.new_cache();
        let t0 = Instant::now();
        match mode {
            Mode::Decode => {
                let mut tok = bos;
                for pos in 0..n {
                    let logits = model.forward(&mut SingleRank, &mut cache, &[tok], pos)?;
                    tok = argmax(&logits);
                }
            }
            Mode::Prefill => {
                let logits = model.forward(&mut SingleRank, &mut cache, &prompt, 0)?;
                std::hint::black_box(argmax(&logits));
            }
        }
        Ok(n as f64 / t0.elapsed().as_secs_f64())
    };
    pool.install(run)?; // warm-up
    let mut rates = Vec::with_capacity(reps);
    for _ in 0..reps {
        rates.push(pool.install(run)?);
    }
    let mean = rates.iter().sum::<f64>() / reps as f64;
    let sd = (rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / reps as f64).sqrt();
    match mode {
        Mode::Decode => {
            println!("weft decode tg{n} threads={threads}: {mean:.2} ± {sd:.2} tokens/s")
        }
        Mode::Prefill => {
            println!("weft prefill pp{n} threads={threads}: {mean:.2} ± {sd:.2} tokens/s")
        }
    }
    Ok(())
}
