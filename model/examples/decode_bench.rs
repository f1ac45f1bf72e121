//! Batch-1 decode benchmark of one rank (TP=1), shaped like
//! `llama-bench -p 0 -n 128`: from an empty context, generate N tokens one
//! at a time and report tokens per second over several repetitions.
//!
//! cargo run --release -p weft-model --example decode_bench -- MODEL.gguf [threads] [n] [reps]

use std::time::Instant;

use weft_model::checkpoint::Checkpoint;
use weft_model::comm::SingleRank;
use weft_model::llama::RankModel;
use weft_model::sampling::argmax;
use weft_model::shard::{read_shard, ShardPlan};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or("usage: decode_bench MODEL [threads] [n] [reps]")?;
    let threads: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let n: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let reps: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let ckpt = Checkpoint::open(std::path::Path::new(path))?;
    let plan = ShardPlan::for_checkpoint(&ckpt, 1)?;
    let shard = read_shard(&ckpt, &plan, 0)?;
    let model = RankModel::from_shard(ckpt.config(), &shard)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let bos = ckpt.config().bos_token_id.unwrap_or(1);
    let run = || -> Result<f64, weft_model::llama::ModelError> {
        let mut cache = model.new_cache();
        let mut tok = bos;
        let t0 = Instant::now();
        for pos in 0..n {
            let logits = model.forward(&mut SingleRank, &mut cache, &[tok], pos)?;
            tok = argmax(&logits);
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
    println!("weft decode tg{n} threads={threads}: {mean:.2} ± {sd:.2} tokens/s");
    Ok(())
}
