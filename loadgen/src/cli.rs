//! Command line of `weft-load`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::arrivals::Arrivals;
use crate::fault::FaultPlan;
use crate::report::{Config, DatasetConfig, FaultConfig, Sections, SloMs};
use crate::runner::LoadShape;
use crate::target::Api;
use crate::workload::random::{self, RandomSpec};
use crate::workload::{conversations, jsonl, Workload, WorkloadError};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "weft-load",
    version,
    about = "Load generator: streams generation requests at fixed concurrency or at a \
             Poisson/gamma arrival rate and reports throughput, TTFT, TPOT, ITL, latency, \
             goodput and cost"
)]
pub struct Cli {
    /// Server to load: grpc://HOST:PORT (weft's weft.v1 Generation API) or
    /// http://HOST:PORT (OpenAI-compatible POST /v1/completions, streamed).
    #[arg(long)]
    pub target: String,
    /// Allow a target host that is not loopback (127.0.0.0/8, ::1, localhost).
    #[arg(long)]
    pub allow_remote: bool,
    /// Model name to request. gRPC: default is the served model; HTTP:
    /// default is the first model of GET /v1/models.
    #[arg(long)]
    pub model: Option<String>,
    /// Requests in flight at once. With --request-rate or --sweep-rates:
    /// the most in flight, by default unbounded (as many as --requests).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: Option<u32>,
    /// Measured requests (after the warm-up).
    #[arg(long, default_value_t = 32)]
    pub requests: usize,
    /// Warm-up requests, sent first and left out of the metrics.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Output tokens per request (the server is asked to ignore EOS).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tokens: u32,
    /// Stop the whole run (warm-up included) after this many seconds;
    /// requests in flight then count as cancelled.
    #[arg(long, default_value_t = 600.0, value_parser = positive_seconds)]
    pub max_duration_s: f64,
    /// Start each prompt with its request index, so that no two requests
    /// share a prompt prefix (defeats servers' prefix caches).
    #[arg(long)]
    pub unique_prompts: bool,
    /// Write the full report as JSON to this file (an array of reports
    /// with --sweep-rates or --sweep-concurrency).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Open loop: send requests at this mean rate (requests/s), with
    /// gamma-distributed gaps as vLLM's benchmark_serving. Absent: each of
    /// --concurrency clients sends its next request when the last finished.
    #[arg(long, value_parser = positive_number)]
    pub request_rate: Option<f64>,
    /// Gamma shape of the inter-arrival times: 1.0 = Poisson, below 1
    /// burstier, above 1 more regular. The mean gap stays 1/rate.
    #[arg(long, default_value_t = 1.0, value_parser = positive_number)]
    pub burstiness: f64,
    /// Seed of the arrival times.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// One measured run per request rate (comma separated, requests/s).
    #[arg(long, value_delimiter = ',', value_parser = positive_number,
          conflicts_with_all = ["request_rate", "sweep_concurrency"])]
    pub sweep_rates: Vec<f64>,
    /// One measured run per concurrency (comma separated).
    #[arg(long, value_delimiter = ',',
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub sweep_concurrency: Vec<u32>,
    /// Goodput objective, repeatable: ttft:MS, tpot:MS or e2el:MS. Goodput
    /// is the rate of requests meeting every objective given.
    #[arg(long, value_parser = parse_slo)]
    pub goodput: Vec<(SloMetric, f64)>,
    /// Price of one GPU for one hour, for the cost per million output tokens.
    #[arg(long, value_parser = positive_number)]
    pub price_per_hour: Option<f64>,
    /// GPUs the server uses (for the cost).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub gpus: u32,
    #[command(flatten)]
    pub dataset: DatasetArgs,
    /// Correctness mode: compare every output with the expected greedy
    /// output in the dataset (a JSONL file with expected_ids or
    /// expected_text, e.g. written by --record-expected) and report every
    /// mismatch, lost or duplicated token; exits non-zero on any.
    #[arg(long, conflicts_with = "unique_prompts")]
    pub check: bool,
    /// Write each prompt of the dataset with the output it got as a JSONL
    /// file of expectations for --check (run it at --concurrency 1 on a
    /// server you trust; every prompt needs one successful request).
    #[arg(long, conflicts_with = "unique_prompts")]
    pub record_expected: Option<PathBuf>,
    /// Fault injection: run --fault-cmd this many seconds into the measured
    /// phase, and report how every request ended.
    #[arg(long, requires = "fault_cmd", value_parser = non_negative_seconds)]
    pub fault_at_s: Option<f64>,
    /// The fault command, run with `sh -c` (e.g. "kill -9 $(cat worker.pid)").
    #[arg(long, requires = "fault_at_s")]
    pub fault_cmd: Option<String>,
    /// The fault command is killed after this many seconds.
    #[arg(long, default_value_t = 60.0, value_parser = positive_seconds)]
    pub fault_timeout_s: f64,
    /// Include every measured request (times, ending, tokens) in the JSON
    /// report (always done with a fault).
    #[arg(long)]
    pub request_log: bool,
    /// Write PNG charts (latency CDF, throughput and TTFT against load) into
    /// this folder.
    #[arg(long)]
    pub charts: Option<PathBuf>,
    /// No progress bar (it is drawn only on a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

/// Which prompts to send.
#[derive(clap::Args, Debug, Clone)]
pub struct DatasetArgs {
    /// builtin: a dozen English prompts; random: token-id prompts of random
    /// length for --tokenizer; conversations: the shipped multi-turn chat
    /// set (or --dataset-path in its format); jsonl: --dataset-path, one
    /// {"prompt"|"prompt_ids"|"messages", "max_tokens"?, "expected_ids"?,
    /// "expected_text"?} per line.
    #[arg(long, value_enum, default_value_t = DatasetKind::Builtin)]
    pub dataset: DatasetKind,
    /// The dataset file (jsonl; optional for conversations).
    #[arg(long)]
    pub dataset_path: Option<PathBuf>,
    /// The target model's tokenizer, for --dataset random: its GGUF file, a
    /// tokenizer.json or a folder holding one.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// --dataset random: mean prompt length in tokens (the output length's
    /// mean is --max-tokens).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub random_input_len: u32,
    /// --dataset random: lengths are drawn uniformly from
    /// [len * (1 - r), len * (1 + r)].
    #[arg(long, default_value_t = 0.0, value_parser = range_ratio)]
    pub random_range_ratio: f64,
}

/// The datasets.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetKind {
    Builtin,
    Random,
    Conversations,
    Jsonl,
}

impl DatasetKind {
    /// The name used on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Builtin => "builtin",
            DatasetKind::Random => "random",
            DatasetKind::Conversations => "conversations",
            DatasetKind::Jsonl => "jsonl",
        }
    }
}

/// A metric a goodput objective constrains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SloMetric {
    Ttft,
    Tpot,
    E2el,
}

impl Cli {
    /// The load shape the flags describe.
    pub fn shape(&self) -> LoadShape {
        LoadShape {
            concurrency: self.concurrency.map_or_else(
                || {
                    if self.request_rate.is_some() || !self.sweep_rates.is_empty() {
                        self.requests.max(1)
                    } else {
                        1
                    }
                },
                |c| c as usize,
            ),
            requests: self.requests,
            warmup: self.warmup,
            max_duration: Duration::from_secs_f64(self.max_duration_s),
            arrivals: self.request_rate.map(|rate| self.arrivals(rate)),
        }
    }

    fn arrivals(&self, rate: f64) -> Arrivals {
        Arrivals {
            rate,
            burstiness: self.burstiness,
            seed: self.seed,
        }
    }

    /// One shape per measured run: the sweep's values, else [`Cli::shape`].
    pub fn shapes(&self) -> Vec<LoadShape> {
        let base = self.shape();
        if !self.sweep_rates.is_empty() {
            let shape = |r: &f64| LoadShape {
                arrivals: Some(self.arrivals(*r)),
                ..base.clone()
            };
            return self.sweep_rates.iter().map(shape).collect();
        }
        if !self.sweep_concurrency.is_empty() {
            let shape = |c: &u32| LoadShape {
                concurrency: *c as usize,
                ..base.clone()
            };
            return self.sweep_concurrency.iter().map(shape).collect();
        }
        vec![base]
    }

    /// Whether the run is a sweep (reported as a JSON array).
    pub fn is_sweep(&self) -> bool {
        !self.sweep_rates.is_empty() || !self.sweep_concurrency.is_empty()
    }

    /// The goodput objectives; the last one given for a metric wins.
    pub fn slo_ms(&self) -> SloMs {
        let mut slo = SloMs::default();
        for (metric, ms) in &self.goodput {
            let slot = match metric {
                SloMetric::Ttft => &mut slo.ttft,
                SloMetric::Tpot => &mut slo.tpot,
                SloMetric::E2el => &mut slo.e2el,
            };
            *slot = Some(*ms);
        }
        slo
    }

    /// Builds the dataset the flags name.
    pub fn workload(&self) -> Result<Workload, WorkloadError> {
        let d = &self.dataset;
        let items = match (d.dataset, &d.dataset_path) {
            (DatasetKind::Builtin, _) => {
                return Ok(Workload::builtin(self.max_tokens, self.unique_prompts))
            }
            (DatasetKind::Jsonl, Some(path)) => jsonl::load(path)?,
            (DatasetKind::Jsonl, None) => {
                return Err(WorkloadError::Invalid(
                    "--dataset jsonl needs --dataset-path".into(),
                ))
            }
            (DatasetKind::Conversations, Some(path)) => conversations::load(path)?,
            (DatasetKind::Conversations, None) => conversations::shipped()?,
            (DatasetKind::Random, _) => {
                let path = d.tokenizer.as_ref().ok_or_else(|| {
                    WorkloadError::Invalid(
                        "--dataset random needs --tokenizer (the model's GGUF or tokenizer.json)"
                            .into(),
                    )
                })?;
                let tokenizer = random::load_tokenizer(path)?;
                let spec = RandomSpec {
                    input_len: d.random_input_len,
                    output_len: self.max_tokens,
                    range_ratio: d.random_range_ratio,
                    seed: self.seed,
                    count: (self.warmup + self.requests).max(1),
                };
                random::items(&tokenizer, &spec)?
            }
        };
        Workload::new(items, self.max_tokens, self.unique_prompts)
    }

    /// The fault to inject, if any.
    pub fn fault(&self) -> Option<FaultPlan> {
        Some(FaultPlan {
            at: Duration::from_secs_f64(self.fault_at_s?),
            command: self.fault_cmd.clone()?,
            timeout: Duration::from_secs_f64(self.fault_timeout_s),
        })
    }

    /// The optional report sections.
    pub fn sections(&self) -> Sections {
        Sections {
            check: self.check,
            request_log: self.request_log,
        }
    }

    fn dataset_config(&self, workload: &Workload) -> DatasetConfig {
        let d = &self.dataset;
        let random = d.dataset == DatasetKind::Random;
        DatasetConfig {
            kind: d.dataset.name(),
            path: match d.dataset {
                DatasetKind::Jsonl | DatasetKind::Conversations => {
                    d.dataset_path.as_ref().map(|p| p.display().to_string())
                }
                _ => None,
            },
            prompts: workload.len(),
            random_input_len: random.then_some(d.random_input_len),
            random_range_ratio: random.then_some(d.random_range_ratio),
        }
    }

    /// The settings echoed in the report of the run of `shape`.
    pub fn config(&self, api: Api, shape: &LoadShape, workload: &Workload) -> Config {
        Config {
            target: self.target.clone(),
            api,
            model: self.model.clone(),
            concurrency: shape.concurrency,
            requests: shape.requests,
            warmup: shape.warmup,
            max_tokens: self.max_tokens,
            max_duration_s: self.max_duration_s,
            unique_prompts: self.unique_prompts,
            request_rate: shape.arrivals.map(|a| a.rate),
            burstiness: self.burstiness,
            seed: self.seed,
            goodput_slo_ms: self.slo_ms(),
            price_per_gpu_hour: self.price_per_hour,
            gpus: self.gpus,
            dataset: self.dataset_config(workload),
            check: self.check,
            fault: self.fault().map(|f| FaultConfig {
                at_s: f.at.as_secs_f64(),
                command: f.command,
            }),
        }
    }
}

fn positive_number(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err("must be a positive number".into())
    }
}

fn parse_slo(s: &str) -> Result<(SloMetric, f64), String> {
    let (name, ms) = s
        .split_once(':')
        .ok_or_else(|| "expected METRIC:MS, e.g. ttft:200".to_string())?;
    let metric = match name {
        "ttft" => SloMetric::Ttft,
        "tpot" => SloMetric::Tpot,
        "e2el" => SloMetric::E2el,
        other => return Err(format!("unknown metric {other:?}: use ttft, tpot or e2el")),
    };
    Ok((metric, positive_number(ms)?))
}

fn non_negative_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && (0.0..1e9).contains(&v) {
        Ok(v)
    } else {
        Err("must be a number of seconds, 0 or more".into())
    }
}

fn range_ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be in [0, 1)".into())
    }
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(v)
    } else {
        Err("must be a positive number of seconds".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_shape() {
        let cli = Cli::try_parse_from(["weft-load", "--target", "grpc://127.0.0.1:50051"])
            .expect("parse");
        assert!(!cli.allow_remote);
        let shape = cli.shape();
        assert_eq!(shape.concurrency, 1);
        assert_eq!(shape.max_duration, Duration::from_secs(600));
        assert_eq!(shape.arrivals, None);
        assert!(!cli.is_sweep());
        assert_eq!(cli.slo_ms(), SloMs::default());
    }

    fn parse(extra: &[&str]) -> Cli {
        let mut argv = vec!["weft-load", "--target", "http://127.0.0.1:1"];
        argv.extend(extra);
        Cli::try_parse_from(argv).expect("parse")
    }

    #[test]
    fn rate_goodput_and_cost_flags() {
        let cli = parse(&[
            "--request-rate",
            "4",
            "--burstiness",
            "0.5",
            "--seed",
            "9",
            "--goodput",
            "ttft:200",
            "--goodput",
            "e2el:5000",
            "--goodput",
            "ttft:100",
            "--price-per-hour",
            "2.5",
            "--gpus",
            "8",
        ]);
        let a = cli.shape().arrivals.expect("arrivals");
        assert_eq!((a.rate, a.burstiness, a.seed), (4.0, 0.5, 9));
        // Open loop without --concurrency: no cap below the request count.
        assert_eq!(cli.shape().concurrency, 32);
        let slo = cli.slo_ms();
        assert_eq!(
            (slo.ttft, slo.tpot, slo.e2el),
            (Some(100.0), None, Some(5000.0))
        );
        let config = cli.config(Api::Openai, &cli.shape(), &Workload::builtin(1, false));
        assert_eq!(config.request_rate, Some(4.0));
        assert_eq!((config.price_per_gpu_hour, config.gpus), (Some(2.5), 8));
    }

    #[test]
    fn sweeps_make_one_shape_per_value() {
        let cli = parse(&["--sweep-rates", "1,2,4", "--concurrency", "16"]);
        assert!(cli.is_sweep());
        let rates: Vec<Option<f64>> = cli
            .shapes()
            .iter()
            .map(|s| s.arrivals.map(|a| a.rate))
            .collect();
        assert_eq!(rates, [Some(1.0), Some(2.0), Some(4.0)]);
        assert!(cli.shapes().iter().all(|s| s.concurrency == 16));
        let cli = parse(&["--sweep-concurrency", "1,8,32"]);
        let cs: Vec<usize> = cli.shapes().iter().map(|s| s.concurrency).collect();
        assert_eq!(cs, [1, 8, 32]);
        assert!(cli.shapes().iter().all(|s| s.arrivals.is_none()));
        assert_eq!(parse(&[]).shapes().len(), 1);
        let both = [
            "weft-load",
            "--target",
            "http://x:1",
            "--sweep-rates",
            "1",
            "--sweep-concurrency",
            "2",
        ];
        assert!(Cli::try_parse_from(both).is_err());
    }

    #[test]
    fn rejects_bad_numbers() {
        for args in [
            ["--concurrency", "0"],
            ["--max-tokens", "0"],
            ["--max-duration-s", "-1"],
            ["--max-duration-s", "inf"],
            ["--request-rate", "0"],
            ["--burstiness", "-1"],
            ["--goodput", "ttft"],
            ["--goodput", "itl:5"],
            ["--goodput", "tpot:-3"],
            ["--sweep-rates", "1,x"],
        ] {
            let mut argv = vec!["weft-load", "--target", "http://127.0.0.1:1"];
            argv.extend(args);
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?}");
        }
    }
}

#[cfg(test)]
mod dataset_tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Cli, clap::Error> {
        let mut argv = vec!["weft-load", "--target", "grpc://127.0.0.1:1"];
        argv.extend(extra);
        Cli::try_parse_from(argv)
    }

    #[test]
    fn datasets_need_their_inputs() {
        let cli = parse(&[]).expect("parse");
        assert_eq!(cli.workload().expect("builtin").len(), 12);
        let conv = parse(&["--dataset", "conversations"]).expect("parse");
        let w = conv.workload().expect("shipped conversations");
        assert!(w.len() >= 64);
        assert_eq!(
            conv.config(Api::Grpc, &conv.shape(), &w).dataset.kind,
            "conversations"
        );
        let err = parse(&["--dataset", "jsonl"]).expect("parse").workload();
        assert!(err.is_err_and(|e| e.to_string().contains("--dataset-path")));
        let err = parse(&["--dataset", "random"]).expect("parse").workload();
        assert!(err.is_err_and(|e| e.to_string().contains("--tokenizer")));
        let missing = parse(&["--dataset", "jsonl", "--dataset-path", "/nonexistent.jsonl"]);
        let err = missing.expect("parse").workload().expect_err("no file");
        assert!(err.to_string().contains("/nonexistent.jsonl"), "{err}");
        assert!(parse(&["--dataset", "sharegpt"]).is_err());
        assert!(parse(&["--random-range-ratio", "1"]).is_err());
    }

    #[test]
    fn check_fault_and_sections_flags() {
        assert!(parse(&["--check", "--unique-prompts"]).is_err());
        assert!(parse(&["--record-expected", "x.jsonl", "--unique-prompts"]).is_err());
        // A fault needs both its time and its command.
        assert!(parse(&["--fault-at-s", "1"]).is_err());
        assert!(parse(&["--fault-cmd", "true"]).is_err());
        assert!(parse(&["--fault-at-s", "-1", "--fault-cmd", "true"]).is_err());
        let cli =
            parse(&["--fault-at-s", "2.5", "--fault-cmd", "kill 1", "--check"]).expect("parse");
        let fault = cli.fault().expect("fault");
        assert_eq!(fault.at, Duration::from_millis(2500));
        assert_eq!(fault.command, "kill 1");
        assert_eq!(fault.timeout, Duration::from_secs(60));
        assert!(cli.sections().check && !cli.sections().request_log);
        let config = cli.config(Api::Grpc, &cli.shape(), &Workload::builtin(1, false));
        assert!(config.check);
        assert_eq!(config.fault.map(|f| f.at_s), Some(2.5));
        assert!(parse(&[]).expect("parse").fault().is_none());
    }
}
