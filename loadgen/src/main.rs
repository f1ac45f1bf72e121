//! `weft-load`: see `weft-load --help`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use weft_loadgen::cli::Cli;
use weft_loadgen::output::{self, Bar};
use weft_loadgen::report;
use weft_loadgen::runner::{self, Hooks, Progress};
use weft_loadgen::target;

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
    let workload = cli.workload().context("cannot build the dataset")?;
    if cli.check && !workload.all_expected() {
        anyhow::bail!(
            "--check needs an expected output for every prompt (a JSONL dataset with \
             expected_ids or expected_text, e.g. from --record-expected)"
        );
    }
    let target = target::connect(&endpoint, cli.model.clone()).await?;
    let fault = cli.fault();
    let bar = (!cli.no_progress).then(Bar::new);
    let hooks = Hooks {
        progress: bar.as_ref().map(|b| b as &dyn Progress),
        fault: fault.as_ref(),
    };
    let mut reports = Vec::new();
    let mut outcomes = Vec::new();
    for shape in cli.shapes() {
        let outcome = runner::run(target.as_ref(), &shape, &workload, hooks).await;
        let config = cli.config(endpoint.api, &shape, &workload);
        let report = report::build(config, &outcome, &workload, cli.sections());
        if let Some(bar) = &bar {
            bar.clear();
        }
        println!("{}", report::summary_line(&report));
        reports.push(report);
        outcomes.push(outcome);
    }
    if let Some(path) = &cli.json {
        let text = match (cli.is_sweep(), reports.first()) {
            (false, Some(only)) => serde_json::to_string_pretty(only)?,
            _ => serde_json::to_string_pretty(&reports)?,
        };
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(dir) = &cli.charts {
        let paths = output::charts(dir, &cli, &outcomes)?;
        eprintln!("weft-load: charts written: {}", output::list(&paths));
    }
    let mut failed = false;
    if let Some(path) = &cli.record_expected {
        failed |= !output::record_expected(path, &workload, &outcomes)?;
    }
    if reports
        .iter()
        .any(|r| r.requests.ok == 0 && r.config.requests > 0)
    {
        eprintln!("weft-load: no request succeeded in a run");
        failed = true;
    }
    if reports
        .iter()
        .any(|r| r.correctness.as_ref().is_some_and(|c| !c.clean()))
    {
        eprintln!("weft-load: outputs differ from the expected ones (see \"correctness\")");
        failed = true;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
