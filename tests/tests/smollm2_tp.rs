//! SmolLM2 over real worker processes: TP=1 and TP=3 agree; a shard
//! streamed over gRPC equals the one read locally.

mod common;

use std::sync::Arc;

use common::{model_path, start_group};
use weft_coordinator::registry::{Registry, RegistryService};
use weft_model::checkpoint::Checkpoint;
use weft_model::shard::{read_shard, ShardPlan};
use weft_model::tokenizer::{GgufTokenizerData, Tokenizer};
use weft_proto::cluster::v1 as pb;

const PROMPTS: [&str; 3] = [
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "The three primary colours are",
    "def fibonacci(n):",
];

fn tokenize(prompts: &[&str]) -> Vec<Vec<u32>> {
    let ckpt = Checkpoint::open(&model_path()).expect("open");
    let gguf = ckpt.gguf().expect("gguf");
    let tok =
        Tokenizer::from_gguf_data(GgufTokenizerData::from_gguf(gguf).expect("tokenizer data"))
            .expect("tokenizer");
    prompts
        .iter()
        .map(|p| tok.encode(p, true).expect("encode"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tp1_and_tp3_processes_agree() {
    let model = model_path();
    let prompts = tokenize(&PROMPTS);
    let steps = 8;
    let mut runs = Vec::new();
    for tp in [1, 3] {
        let g = start_group(&model, tp, pb::ShardSource::LocalPath).await;
        let mut out = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            out.push(g.greedy(i as u64 + 1, p, steps).await);
        }
        g.stop().await;
        runs.push(out);
    }
    for (p, ((t1, l1), (t3, l3))) in runs[0].iter().zip(&runs[1]).enumerate() {
        assert_eq!(
            t1, t3,
            "prompt {p}: greedy tokens differ between TP=1 and TP=3"
        );
        for (step, (a, b)) in l1.iter().zip(l3).enumerate() {
            assert_eq!(a.len(), 49152);
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
                / scale;
            assert!(
                d <= 1e-4,
                "prompt {p} step {step}: TP=1 vs TP=3 logits differ by {d} (relative)"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_shards_equal_local_shards() {
    let model = model_path();
    // Over the wire, in process: every rank's streamed shard is byte-for-byte the local one.
    let ckpt = Arc::new(Checkpoint::open(&model).expect("open"));
    let plan = Arc::new(ShardPlan::for_checkpoint(&ckpt, 3).expect("plan"));
    let registry = Registry::new(3, ckpt.clone(), plan.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let svc = pb::coordinator_server::CoordinatorServer::new(RegistryService(registry));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    for rank in 0..3 {
        let streamed = weft_worker::shard_stream::fetch_shard(&url, rank, 3, None)
            .await
            .expect("fetch");
        let local = read_shard(&ckpt, &plan, rank).expect("read");
        assert_eq!(streamed.tensors.len(), local.tensors.len());
        for (a, b) in streamed.tensors.iter().zip(&local.tensors) {
            assert_eq!(
                (a.name, a.dtype, a.rows, a.cols),
                (b.name, b.dtype, b.rows, b.cols)
            );
            assert!(a.data == b.data, "{}: bytes differ", a.name.canonical());
        }
        assert_eq!(streamed.digest(), local.digest());
    }
    // A request for a rank outside the group is refused.
    assert!(weft_worker::shard_stream::fetch_shard(&url, 3, 3, None)
        .await
        .is_err());
    server.abort();

    // Real worker processes: streamed and local loading report the same digests.
    let mut digests = Vec::new();
    for source in [pb::ShardSource::LocalPath, pb::ShardSource::Stream] {
        let g = start_group(&model, 3, source).await;
        digests.push(
            g.loaded
                .iter()
                .map(|l| (l.rank, l.shard_digest, l.shard_bytes))
                .collect::<Vec<_>>(),
        );
        g.stop().await;
    }
    assert_eq!(digests[0], digests[1]);
}
