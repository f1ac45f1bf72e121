//! Command line of `weft-load`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::runner::LoadShape;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "weft-load",
    version,
    about = "Load generator: streams generation requests at fixed concurrency and reports \
             throughput, TTFT, TPOT and latency"
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
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
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
    /// Write the full report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl Cli {
    /// The load shape the flags describe.
    pub fn shape(&self) -> LoadShape {
        LoadShape {
            concurrency: self.concurrency as usize,
            requests: self.requests,
            warmup: self.warmup,
            max_duration: Duration::from_secs_f64(self.max_duration_s),
        }
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
        assert_eq!(cli.concurrency, 1);
        assert!(!cli.allow_remote);
        let shape = cli.shape();
        assert_eq!(shape.max_duration, Duration::from_secs(600));
    }

    #[test]
    fn rejects_bad_numbers() {
        for args in [
            ["--concurrency", "0"],
            ["--max-tokens", "0"],
            ["--max-duration-s", "-1"],
            ["--max-duration-s", "inf"],
        ] {
            let mut argv = vec!["weft-load", "--target", "http://127.0.0.1:1"];
            argv.extend(args);
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?}");
        }
    }
}
