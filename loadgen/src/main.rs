//! `weft-load`: see `weft-load --help`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use weft_loadgen::cli::Cli;
use weft_loadgen::report::{self, Config};
use weft_loadgen::workload::Workload;
use weft_loadgen::{runner, target};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread: the load generator should take as little CPU as possible
    // from the server it measures on the same machine.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let endpoint = target::parse_target(&cli.target, cli.allow_remote)?;
    let shape = cli.shape();
    let target = target::connect(&endpoint, cli.model.clone()).await?;
    let workload = Workload::new(cli.max_tokens, cli.unique_prompts);
    let outcome = runner::run(target.as_ref(), &shape, &workload).await;
    let config = Config {
        target: cli.target.clone(),
        api: endpoint.api,
        model: cli.model.clone(),
        concurrency: shape.concurrency,
        requests: shape.requests,
        warmup: shape.warmup,
        max_tokens: cli.max_tokens,
        max_duration_s: cli.max_duration_s,
        unique_prompts: cli.unique_prompts,
    };
    let report = report::build(config, &outcome);
    println!("{}", report::summary_line(&report));
    if let Some(path) = &cli.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if report.requests.ok == 0 && shape.requests > 0 {
        eprintln!("weft-load: no request succeeded");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
