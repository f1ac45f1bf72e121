//! `weft-load`: see `weft-load --help`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use weft_loadgen::cli::Cli;
use weft_loadgen::report;
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
    let target = target::connect(&endpoint, cli.model.clone()).await?;
    let workload = Workload::new(cli.max_tokens, cli.unique_prompts);
    let mut reports = Vec::new();
    for shape in cli.shapes() {
        let outcome = runner::run(target.as_ref(), &shape, &workload).await;
        let report = report::build(cli.config(endpoint.api, &shape), &outcome);
        println!("{}", report::summary_line(&report));
        reports.push(report);
    }
    if let Some(path) = &cli.json {
        let text = match (cli.is_sweep(), reports.first()) {
            (false, Some(only)) => serde_json::to_string_pretty(only)?,
            _ => serde_json::to_string_pretty(&reports)?,
        };
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let failed = reports
        .iter()
        .any(|r| r.requests.ok == 0 && r.config.requests > 0);
    if failed {
        eprintln!("weft-load: no request succeeded in a run");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
