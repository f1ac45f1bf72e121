//! What `weft-load` writes besides the report: the progress bar, the PNG
//! charts and the recorded expectations.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::charts::{self, ChartRun, LoadAxis};
use crate::cli::Cli;
use crate::runner::{Progress, RunOutcome};
use crate::target::Timeline;
use crate::workload::{jsonl, Workload};

/// A progress bar on standard error, drawn only when it is a terminal.
pub struct Bar {
    bar: ProgressBar,
    failed: AtomicUsize,
}

impl Bar {
    pub fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{msg:>9} [{elapsed_precise}] {wide_bar} {pos}/{len} (eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(250));
        Self {
            bar,
            failed: AtomicUsize::new(0),
        }
    }

    /// Removes the bar (before a summary line is printed).
    pub fn clear(&self) {
        self.bar.set_draw_target(ProgressDrawTarget::hidden());
        self.bar.finish_and_clear();
        self.bar.set_draw_target(ProgressDrawTarget::stderr());
    }
}

impl Default for Bar {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Bar {
    fn phase(&self, name: &'static str, total: usize) {
        self.failed.store(0, Ordering::Relaxed);
        self.bar.reset();
        self.bar.set_length(total as u64);
        self.bar.set_message(name);
    }

    fn ended(&self, ok: bool) {
        if !ok {
            let failed = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
            self.bar.set_message(format!("{failed} failed"));
        }
        self.bar.inc(1);
    }
}

/// Draws the charts of all runs into `dir`.
pub fn charts(dir: &Path, cli: &Cli, outcomes: &[RunOutcome]) -> anyhow::Result<Vec<PathBuf>> {
    let shapes = cli.shapes();
    let axis = if shapes.iter().any(|s| s.arrivals.is_some()) {
        LoadAxis::RequestRate
    } else {
        LoadAxis::Concurrency
    };
    let runs: Vec<ChartRun> = shapes
        .iter()
        .zip(outcomes)
        .map(|(shape, outcome)| {
            let (label, load) = match &shape.arrivals {
                Some(a) => (format!("{} req/s", a.rate), a.rate),
                None => (format!("c={}", shape.concurrency), shape.concurrency as f64),
            };
            let timelines: Vec<&Timeline> = outcome.measured.timelines().map(|(_, t)| t).collect();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let output_tokens: u64 = timelines.iter().map(|t| t.output_tokens).sum();
            let wall = outcome.measured.wall.as_secs_f64();
            ChartRun {
                label,
                load,
                e2e_ms: timelines.iter().map(|t| ms(t.latency)).collect(),
                ttft_ms: timelines.iter().filter_map(|t| t.ttft()).map(ms).collect(),
                output_tokens_per_s: (wall > 0.0).then(|| output_tokens as f64 / wall),
            }
        })
        .collect();
    charts::draw(dir, &runs, axis)
        .with_context(|| format!("cannot draw charts in {}", dir.display()))
}

/// Paths as one comma-separated string.
pub fn list(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

/// Writes each prompt of `workload` with the first successful output it
/// got (warm-up included) to `path`; `false` (after a message) when some
/// prompt got none.
pub fn record_expected(
    path: &Path,
    workload: &Workload,
    outcomes: &[RunOutcome],
) -> anyhow::Result<bool> {
    let mut first: BTreeMap<usize, (usize, &Timeline)> = BTreeMap::new();
    for outcome in outcomes {
        for phase in [&outcome.warmup, &outcome.measured] {
            for (index, t) in phase.timelines() {
                first.entry(index % workload.len()).or_insert((index, t));
            }
        }
    }
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    for (item, (index, t)) in &first {
        let line = jsonl::record_line(workload.item(*item), workload.max_tokens(*index), t);
        writeln!(file, "{line}").with_context(|| format!("cannot write {}", path.display()))?;
    }
    file.flush()?;
    // The prompts requests were made for (a run may use fewer than all).
    let sent = outcomes
        .iter()
        .map(|o| o.warmup.records.len() + o.measured.records.len())
        .max()
        .unwrap_or(0)
        .min(workload.len());
    let missing = sent.saturating_sub(first.len());
    if missing > 0 {
        eprintln!(
            "weft-load: {missing} of the {sent} prompts sent got no successful output; \
             {} holds the other {}",
            path.display(),
            first.len()
        );
    }
    Ok(missing == 0)
}
