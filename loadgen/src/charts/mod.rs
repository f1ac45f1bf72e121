//! PNG charts of load-test results, drawn with `plotters` in pure Rust.
//!
//! No system fonts are needed: text uses the Ubuntu-Light TTF embedded in the
//! `epaint_default_fonts` crate, registered once as plotters' `sans-serif`.
//! Pixels are rendered into memory and encoded with the `png` crate.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

const WIDTH: u32 = 1024;
const HEIGHT: u32 = 640;
const FONT: &str = "sans-serif";
const FRACTION: &str = "fraction of requests";
const E2E_CDF: [&str; 3] = [
    "End-to-end latency CDF",
    "end-to-end latency (ms)",
    FRACTION,
];
const TTFT_CDF: [&str; 3] = ["Time to first token CDF", "TTFT (ms)", FRACTION];
/// Line colours (a colour-blind-friendly qualitative palette), cycled per run.
const COLORS: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(120, 120, 120),
    RGBColor(0, 0, 0),
];

/// One measured run as the charts see it.
#[derive(Debug, Clone, Default)]
pub struct ChartRun {
    /// Legend label, e.g. "c=8" or "4 req/s".
    pub label: String,
    /// The load of this run on the x axis of the "against load" charts (request rate or concurrency).
    pub load: f64,
    /// Per-request end-to-end latency of successful requests, milliseconds, any order.
    pub e2e_ms: Vec<f64>,
    /// Per-request time to first token of successful requests, milliseconds, any order.
    pub ttft_ms: Vec<f64>,
    /// Output tokens per second of the run.
    pub output_tokens_per_s: Option<f64>,
}

/// Which quantity the x axis of the load charts shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadAxis {
    /// Open-loop request rate, requests per second.
    RequestRate,
    /// Closed-loop concurrency (requests in flight).
    Concurrency,
}

impl LoadAxis {
    fn description(self) -> &'static str {
        match self {
            LoadAxis::RequestRate => "request rate (req/s)",
            LoadAxis::Concurrency => "concurrency",
        }
    }
}

/// Why charts could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// Creating the directory or writing a file failed.
    #[error("writing chart: {0}")]
    Io(#[from] std::io::Error),
    /// plotters failed to draw.
    #[error("drawing chart: {0}")]
    Draw(String),
    /// PNG encoding failed.
    #[error("encoding PNG: {0}")]
    Encode(#[from] png::EncodingError),
    /// The embedded font could not be registered.
    #[error("embedded chart font is invalid")]
    Font,
    /// No run has any finite sample or throughput to draw.
    #[error("no finite data to chart")]
    NoData,
}

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for ChartError {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        ChartError::Draw(e.to_string())
    }
}

/// One named line of (x, y) points.
struct Series {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// Writes latency_cdf.png, throughput.png and ttft.png into `dir` (created if missing); returns their paths.
///
/// Non-finite values are ignored. A chart whose own data is empty is still
/// written (with a "no data" note); [`ChartError::NoData`] is returned, and
/// nothing written, only when no run has anything finite to draw.
pub fn draw(dir: &Path, runs: &[ChartRun], axis: LoadAxis) -> Result<Vec<PathBuf>, ChartError> {
    let cdf = cdf_series(runs);
    let (throughput, ttft) = load_series(runs);
    let has_points = |s: &[Series]| s.iter().any(|s| !s.points.is_empty());
    if !has_points(&cdf.0) && !has_points(&cdf.1) && !has_points(&throughput) {
        return Err(ChartError::NoData);
    }
    ensure_font()?;
    std::fs::create_dir_all(dir)?;
    let cdf_path = dir.join("latency_cdf.png");
    render(&cdf_path, |root| {
        let (left, right) = root.split_horizontally(WIDTH / 2);
        panel(&left, E2E_CDF, &cdf.0, true)?;
        panel(&right, TTFT_CDF, &cdf.1, true)
    })?;
    let x = axis.description();
    let throughput_labels = [
        "Output throughput vs load",
        x,
        "output throughput (tokens/s)",
    ];
    let ttft_labels = ["TTFT percentiles vs load", x, "TTFT (ms)"];
    let mut paths = vec![cdf_path];
    for (name, labels, series) in [
        ("throughput.png", throughput_labels, &throughput),
        ("ttft.png", ttft_labels, &ttft),
    ] {
        let path = dir.join(name);
        render(&path, |root| panel(root, labels, series, false))?;
        paths.push(path);
    }
    Ok(paths)
}

/// Percentile of `sorted` (ascending, finite) at fraction `q` in [0, 1], with
/// linear interpolation between the closest ranks (numpy's default method).
/// `None` when `sorted` is empty or `q` is not finite; `q` is clamped to [0, 1].
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    if !q.is_finite() {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * last as f64;
    let lo = (rank.floor() as usize).min(last);
    let hi = (lo + 1).min(last);
    let frac = rank - lo as f64;
    Some(sorted[lo] + frac * (sorted[hi] - sorted[lo]))
}

/// The finite values of `values`, sorted ascending.
fn finite_sorted(values: &[f64]) -> Vec<f64> {
    let mut out: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    out.sort_by(f64::total_cmp);
    out
}

/// Empirical CDF as a step line: (x, fraction of samples <= x).
fn ecdf_steps(sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len() as f64;
    let mut points = Vec::with_capacity(2 * sorted.len());
    for (i, &v) in sorted.iter().enumerate() {
        points.push((v, i as f64 / n));
        points.push((v, (i + 1) as f64 / n));
    }
    points
}

/// Per-run CDF lines for end-to-end latency and TTFT; runs without samples are skipped.
fn cdf_series(runs: &[ChartRun]) -> (Vec<Series>, Vec<Series>) {
    let mut e2e = Vec::new();
    let mut ttft = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        for (samples, out) in [(&run.e2e_ms, &mut e2e), (&run.ttft_ms, &mut ttft)] {
            let sorted = finite_sorted(samples);
            if !sorted.is_empty() {
                let label = run.label.clone();
                out.push(Series {
                    label,
                    color,
                    points: ecdf_steps(&sorted),
                });
            }
        }
    }
    (e2e, ttft)
}

/// Throughput line and TTFT p50/p99 lines against load, sorted by load.
fn load_series(runs: &[ChartRun]) -> (Vec<Series>, Vec<Series>) {
    let mut runs: Vec<&ChartRun> = runs.iter().filter(|r| r.load.is_finite()).collect();
    runs.sort_by(|a, b| a.load.total_cmp(&b.load));
    let throughput = runs
        .iter()
        .filter_map(|r| {
            r.output_tokens_per_s
                .filter(|t| t.is_finite())
                .map(|t| (r.load, t))
        })
        .collect();
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    for run in &runs {
        let sorted = finite_sorted(&run.ttft_ms);
        if let (Some(a), Some(b)) = (percentile(&sorted, 0.50), percentile(&sorted, 0.99)) {
            p50.push((run.load, a));
            p99.push((run.load, b));
        }
    }
    let series = |label: &str, color, points| Series {
        label: label.into(),
        color,
        points,
    };
    (
        vec![series("output tokens/s", COLORS[0], throughput)],
        vec![
            series("TTFT p50", COLORS[0], p50),
            series("TTFT p99", COLORS[1], p99),
        ],
    )
}

/// `min..max` of the values, padded by 5% of the span (or by 10% of the
/// magnitude, at least 1, when all values are equal). `0.0..1.0` when empty.
fn padded_range(values: impl IntoIterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return 0.0..1.0;
    }
    let span = hi - lo;
    let pad = if span > f64::EPSILON * hi.abs().max(1.0) {
        span * 0.05
    } else {
        (hi.abs() * 0.1).max(1.0)
    };
    (lo - pad)..(hi + pad)
}

/// `0..max` padded by 10% (`0..1` when there is nothing positive), for y axes
/// of quantities that are never negative.
fn zero_based_range(values: impl IntoIterator<Item = f64>) -> Range<f64> {
    let max = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    if max > 0.0 {
        0.0..max * 1.1
    } else {
        0.0..1.0
    }
}

/// Axis tick text: whole numbers without decimals, others with at most three.
fn tick(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 * v.abs().max(1.0) {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Registers the embedded font as `sans-serif` once per process.
fn ensure_font() -> Result<(), ChartError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = REGISTERED.get_or_init(|| {
        register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT).is_ok()
    });
    if *ok {
        Ok(())
    } else {
        Err(ChartError::Font)
    }
}

/// Draws into an in-memory RGB buffer with `paint` and writes it to `path` as PNG.
fn render<F>(path: &Path, paint: F) -> Result<(), ChartError>
where
    F: FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), ChartError>,
{
    let mut pixels = vec![0u8; WIDTH as usize * HEIGHT as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        paint(&root)?;
        root.present()?;
    }
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(())
}

/// One chart panel with `[title, x label, y label]`: a CDF (y = fraction
/// 0..1, step lines) or a chart against load (y from 0, lines with markers).
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    [title, x_desc, y_desc]: [&str; 3],
    series: &[Series],
    cdf: bool,
) -> Result<(), ChartError> {
    let points = || series.iter().flat_map(|s| s.points.iter().copied());
    let x_range = padded_range(points().map(|p| p.0));
    let y_range = if cdf {
        0.0..1.0
    } else {
        zero_based_range(points().map(|p| p.1))
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 26))
        .margin(14)
        .x_label_area_size(50)
        .y_label_area_size(if cdf { 64 } else { 80 })
        .build_cartesian_2d(x_range, y_range)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .light_line_style(WHITE.mix(0.0))
        .x_labels(if cdf { 6 } else { 10 })
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .draw()?;
    let legend_at = if cdf {
        SeriesLabelPosition::LowerRight
    } else {
        SeriesLabelPosition::UpperLeft
    };
    draw_lines(&mut chart, series, !cdf, legend_at)
}

type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws each non-empty series (with markers if asked) and a legend; writes
/// "no data" in the middle of the plot when every series is empty.
fn draw_lines<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    series: &[Series],
    markers: bool,
    legend_at: SeriesLabelPosition,
) -> Result<(), ChartError> {
    let mut drawn = 0;
    for s in series.iter().filter(|s| !s.points.is_empty()) {
        let style = s.color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), style))?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
        if markers {
            let dots = s
                .points
                .iter()
                .map(|&p| Circle::new(p, 5, s.color.filled()));
            chart.draw_series(dots)?;
        }
        drawn += 1;
    }
    if drawn == 0 {
        let (x, y) = (chart.x_range(), chart.y_range());
        let at = ((x.start + x.end) / 2.0, (y.start + y.end) / 2.0);
        let style = TextStyle::from((FONT, 28)).color(&RGBColor(120, 120, 120));
        let style = style.pos(Pos::new(HPos::Center, VPos::Center));
        chart.draw_series(std::iter::once(Text::new("no data", at, style)))?;
        return Ok(());
    }
    chart
        .configure_series_labels()
        .position(legend_at)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT, 16))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests;
