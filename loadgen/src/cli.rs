//! Command line of `weft-load`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::arrivals::Arrivals;
use crate::report::{Config, SloMs};
use crate::runner::LoadShape;
use crate::target::Api;

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

    /// The settings echoed in the report of the run of `shape`.
    pub fn config(&self, api: Api, shape: &LoadShape) -> Config {
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
        let config = cli.config(Api::Openai, &cli.shape());
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
