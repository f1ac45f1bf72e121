//! `--resume-on-failure` with seeded sampling (issue 7, part 2): requests
//! sampled at temperature 0.9 / top-p 0.95 with a seed each, interrupted by a
//! SIGKILLed worker, are replayed onto the re-formed group and finish with
//! exactly the output of an undisturbed run (the sampler's randomness is keyed
//! by seed and position, so a replay draws the same numbers).

mod common;

use std::time::Duration;

use common::server::{generate, text_request};
use common::{children_of, model_path, signal, Cluster};
use weft_proto::v1;

const PROMPTS: [&str; 4] = [
    "Write a short story about a lighthouse keeper.",
    "List some ideas for a weekend trip.",
    "Explain why the sky is blue.",
    "Describe your favourite meal.",
];

fn request(i: usize) -> v1::GenerateRequest {
    let mut r = text_request(PROMPTS[i % PROMPTS.len()], 40);
    r.ignore_eos = true;
    r.sampling = Some(v1::SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        seed: Some(1000 + i as u64),
        ..Default::default()
    });
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_sampling_resumes_with_the_undisturbed_output() {
    let model = model_path();
    let cluster = Cluster::start(&[
        "--model",
        model.to_str().expect("utf-8 path"),
        "--tp",
        "3",
        "--resume-on-failure",
        "--recovery-wait-s",
        "40",
    ]);
    let url = cluster.url();
    let mut want = Vec::new();
    for i in 0..8 {
        want.push(generate(&url, request(i)).await.expect("undisturbed").ids);
    }
    // Sampling is really on: the same prompt with another seed goes elsewhere.
    assert_ne!(want[0], want[4], "seeds 1000 and 1004 gave the same output");

    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move { generate(&url, request(i)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        tasks.iter().all(|t| !t.is_finished()),
        "the requests must still be running when the worker dies"
    );
    let workers = children_of(cluster.pid());
    assert_eq!(workers.len(), 3, "{workers:?}");
    signal(workers[1], libc::SIGKILL);
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t
            .await
            .expect("join")
            .unwrap_or_else(|s| panic!("request {i} did not resume: {s}"));
        assert_eq!(
            out.ids, want[i],
            "request {i} differs from the undisturbed run"
        );
    }
    assert!(
        !children_of(cluster.pid()).contains(&workers[1]),
        "rank 1 was restarted"
    );
}
