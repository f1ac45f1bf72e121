//! SmolLM2 greedy output against the independent numpy float64 reference
//! in tests/golden/smollm2_greedy.json (how it was produced and the command
//! to regenerate it are recorded in the file itself).

mod common;

use serde::Deserialize;
use weft_model::checkpoint::Checkpoint;
use weft_model::comm::SingleRank;
use weft_model::llama::RankModel;
use weft_model::sampling::{argmax, logprob_of};
use weft_model::shard::{read_shard, ShardPlan};
use weft_model::tokenizer::Tokenizer;

#[derive(Deserialize)]
struct Golden {
    model: GoldenModel,
    prompts: Vec<GoldenPrompt>,
}

#[derive(Deserialize)]
struct GoldenModel {
    sha256: String,
}

#[derive(Deserialize)]
struct GoldenPrompt {
    name: String,
    prompt: String,
    prompt_ids: Vec<u32>,
    tokens: Vec<u32>,
    steps: Vec<GoldenStep>,
}

#[derive(Deserialize)]
struct GoldenStep {
    logprob: f64,
    top2_gap: f64,
}

fn golden() -> Golden {
    let path = common::repo_root().join("tests/golden/smollm2_greedy.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden file")).expect("golden json")
}

#[test]
fn greedy_output_agrees_with_float64_reference() {
    let g = golden();
    assert!(g.prompts.len() >= 5);
    assert_eq!(g.model.sha256.len(), 64);
    let ckpt = Checkpoint::open(&common::model_path()).expect("open");
    let tok = Tokenizer::from_gguf(ckpt.gguf().expect("gguf")).expect("tokenizer");
    let plan = ShardPlan::for_checkpoint(&ckpt, 1).expect("plan");
    let model = RankModel::from_shard(ckpt.config(), &read_shard(&ckpt, &plan, 0).expect("shard"))
        .expect("model");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("pool");
    let mut all_diffs = Vec::new();
    for p in &g.prompts {
        assert_eq!(
            tok.encode(&p.prompt, true).expect("encode"),
            p.prompt_ids,
            "{}: tokenization differs",
            p.name
        );
        assert_eq!(p.tokens.len(), 24);
        let mut cache = model.new_cache();
        let (mut input, mut pos) = (p.prompt_ids.clone(), 0);
        let mut diffs = Vec::new();
        let mut diverged = None;
        for (i, step) in p.steps.iter().enumerate() {
            let logits = pool
                .install(|| model.forward(&mut SingleRank, &mut cache, &input, pos))
                .expect("forward");
            pos += input.len();
            let ours = argmax(&logits);
            if ours != p.tokens[i] {
                diverged = Some(i);
                assert!(
                    step.top2_gap < 0.5,
                    "{}: engine chose {ours} at step {i} where the reference chose {} with a clear top-2 gap of {}",
                    p.name,
                    p.tokens[i],
                    step.top2_gap
                );
                break;
            }
            diffs.push((logprob_of(&logits, p.tokens[i]) as f64 - step.logprob).abs());
            input = vec![ours];
        }
        let mad = diffs.iter().sum::<f64>() / diffs.len().max(1) as f64;
        eprintln!(
            "{}: {} matching tokens, diverged at {diverged:?}, mean |Δlogprob| {mad:.2e}",
            p.name,
            diffs.len()
        );
        assert!(mad <= 0.04, "{}: mean |Δlogprob| {mad} > 0.04", p.name);
        all_diffs.extend(diffs);
    }
    let mad = all_diffs.iter().sum::<f64>() / all_diffs.len() as f64;
    eprintln!(
        "overall mean |Δlogprob| over {} tokens: {mad:.2e}",
        all_diffs.len()
    );
}
