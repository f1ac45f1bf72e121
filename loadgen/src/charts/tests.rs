use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> Self {
        let name = format!("weft-charts-{}-{name}", std::process::id());
        let dir = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(label: &str, load: f64, e2e: &[f64], ttft: &[f64], tps: Option<f64>) -> ChartRun {
    ChartRun {
        label: label.into(),
        load,
        e2e_ms: e2e.to_vec(),
        ttft_ms: ttft.to_vec(),
        output_tokens_per_s: tps,
    }
}

/// Draws `runs` into a fresh directory and checks that the three files
/// are there, in order, and are PNGs that decode at the chart size.
fn draw_ok(name: &str, runs: &[ChartRun], axis: LoadAxis) {
    let tmp = TempDir::new(name);
    let dir = tmp.0.join("nested");
    let paths = draw(&dir, runs, axis).unwrap();
    let names = ["latency_cdf.png", "throughput.png", "ttft.png"].map(|n| dir.join(n));
    assert_eq!(paths, names);
    for path in paths {
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{path:?}");
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut buf).unwrap();
        assert_eq!((frame.width, frame.height), (WIDTH, HEIGHT));
    }
}

#[test]
fn percentile_matches_numpy_linear() {
    let cases: [(&[f64], f64, f64); 7] = [
        (&[1.0, 2.0, 3.0, 4.0], 0.5, 2.5),
        (&[1.0, 2.0, 3.0, 4.0], 0.99, 3.97),
        (&[15.0, 20.0, 35.0, 40.0, 50.0], 0.4, 29.0),
        (&[10.0, 20.0, 30.0, 40.0, 50.0], 0.9, 46.0),
        (&[10.0, 20.0, 30.0], 0.0, 10.0),
        (&[10.0, 20.0, 30.0], 1.0, 30.0),
        (&[7.0], 0.99, 7.0),
    ];
    for (sorted, q, want) in cases {
        let got = percentile(sorted, q).unwrap();
        assert!((got - want).abs() < 1e-9, "{sorted:?} at {q}: {got}");
    }
    assert_eq!(percentile(&[], 0.5), None);
    assert_eq!(percentile(&[1.0], f64::NAN), None);
}

#[test]
fn samples_become_sorted_finite_cdf_steps() {
    let v = finite_sorted(&[2.0, f64::NAN, 1.0, f64::INFINITY, f64::NEG_INFINITY]);
    assert_eq!(v, [1.0, 2.0]);
    assert_eq!(
        ecdf_steps(&v),
        [(1.0, 0.0), (1.0, 0.5), (2.0, 0.5), (2.0, 1.0)]
    );
}

#[test]
fn ranges_are_padded() {
    assert_eq!(padded_range([]), 0.0..1.0);
    assert_eq!(padded_range([5.0, 5.0]), 4.0..6.0);
    assert_eq!(padded_range([200.0]), 180.0..220.0);
    assert_eq!(padded_range([0.0, 100.0, f64::NAN]), -5.0..105.0);
    assert_eq!(zero_based_range([0.0]), 0.0..1.0);
    assert_eq!(zero_based_range([10.0, f64::INFINITY]), 0.0..11.0);
    let ticks = [500.0, 0.5, 3.25, -2.0].map(|v| tick(&v));
    assert_eq!(ticks, ["500", "0.5", "3.25", "-2"]);
}

#[test]
fn draws_three_pngs_for_several_runs() {
    let runs: Vec<ChartRun> = [1.0, 2.0, 4.0, 8.0]
        .map(|c: f64| {
            let e2e: Vec<f64> = (0..200).map(|i| 400.0 * c + f64::from(i) * 3.0).collect();
            let ttft: Vec<f64> = (0..200).map(|i| 20.0 * c + f64::from(i % 50)).collect();
            run(&format!("c={c}"), c, &e2e, &ttft, Some(90.0 * c.sqrt()))
        })
        .into();
    draw_ok("several", &runs, LoadAxis::Concurrency);
}

#[test]
fn single_run_with_one_sample_draws() {
    let runs = [run("4 req/s", 4.0, &[250.0], &[30.0], Some(120.0))];
    draw_ok("single", &runs, LoadAxis::RequestRate);
}

#[test]
fn equal_values_and_non_finite_are_tolerated() {
    let nan = f64::NAN;
    let runs = [
        run(
            "a",
            2.0,
            &[100.0, 100.0, nan],
            &[f64::INFINITY, 5.0],
            Some(nan),
        ),
        run("b", nan, &[100.0], &[5.0], Some(10.0)),
        run("c", 2.0, &[], &[], None),
    ];
    draw_ok("equal", &runs, LoadAxis::RequestRate);
}

#[test]
fn partly_empty_data_still_draws_every_chart() {
    draw_ok(
        "partial",
        &[run("c=1", 1.0, &[], &[], Some(50.0))],
        LoadAxis::Concurrency,
    );
}

#[test]
fn nothing_finite_is_no_data() {
    let dir = TempDir::new("empty");
    let runs = [
        run("x", 1.0, &[], &[], None),
        run("y", 2.0, &[f64::NAN], &[f64::INFINITY], Some(f64::NAN)),
    ];
    for runs in [&runs[..], &[]] {
        let err = draw(&dir.0, runs, LoadAxis::Concurrency).unwrap_err();
        assert!(matches!(err, ChartError::NoData), "{err}");
    }
    assert!(!dir.0.exists());
}
