//! Device checks for a GPU check binary and the tests: every CUDA kernel against the CPU
//! kernel of this crate, plus copy-bandwidth and GEMM-rate measurements.
//!
//! Each check makes fresh random inputs (seeded), rounds them to bf16 so that both sides
//! see the same values, poisons the device outputs first (NaN for floats, a sentinel for
//! ids) so that an element the kernel never wrote shows up, runs the CUDA kernel and the
//! CPU kernel (f32), and compares. The relative error of element `i` is
//! `|gpu_i - cpu_i| / max(|cpu_i|, mean_j |cpu_j|)` (the mean keeps elements near zero
//! from dominating); a check passes when the largest is at most [`TOLERANCE`], no output
//! is NaN or unwritten, and every id matches.

use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use half::bf16;

use super::check_attn as attn_cases;
use super::check_cases as cases;
use super::device::CudaBackend;
use super::error::CudaError;
use super::gemm::matmul_bf16;
use super::tensor::DeviceBuffer;

/// The largest relative error a check accepts.
pub const TOLERANCE: f64 = 1e-2;

/// The outcome of one kernel check.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckResult {
    pub name: String,
    pub max_rel_err: f64,
    /// Whether any output was NaN or left unwritten (still poisoned).
    pub has_nan: bool,
    pub passed: bool,
    /// Shapes, the worst element, or the error that stopped the check.
    pub detail: String,
}

impl CheckResult {
    pub(crate) fn failed(name: &str, detail: String) -> CheckResult {
        CheckResult {
            name: name.to_string(),
            max_rel_err: f64::INFINITY,
            has_nan: false,
            passed: false,
            detail,
        }
    }
}

type CheckFn = fn(&CudaBackend, &mut Rng) -> Result<CheckResult, CudaError>;

/// Every check, by name.
const CHECKS: &[(&str, CheckFn)] = &[
    ("embedding", cases::embedding),
    ("rms_norm", cases::rms_norm),
    ("add_rms_norm", cases::add_rms_norm),
    ("rope_half", cases::rope_half),
    ("rope_interleaved", cases::rope_interleaved),
    ("qkv_rope", cases::qkv_rope),
    ("fill_random", cases::fill_random),
    ("silu_mul", cases::silu_mul),
    ("silu_mul_fused", cases::silu_mul_fused),
    ("paged_write", attn_cases::paged_write),
    ("paged_attention_decode", attn_cases::decode),
    ("paged_attention_decode_gqa16", attn_cases::decode_gqa16),
    ("paged_attention_prefill", attn_cases::prefill),
    ("paged_attention_prefill_gemm", attn_cases::prefill_gemm),
    ("paged_attention_mixed", attn_cases::prefill_mixed),
    ("paged_attention_flash", attn_cases::prefill_flash),
    ("matmul_bf16", cases::matmul_bf16_out),
    ("matmul_bf16_f32_out", cases::matmul_f32_out),
    ("argmax_logprob", cases::argmax),
    ("topk_logprobs", cases::topk),
];

/// The names [`run_kernel_check`] accepts, in the order [`run_kernel_checks`] runs them.
pub fn kernel_check_names() -> Vec<&'static str> {
    CHECKS.iter().map(|(n, _)| *n).collect()
}

/// Runs one check (`None` for an unknown name). An error of the backend (compile, launch,
/// allocation) is reported as a failed check, with the error in `detail`.
pub fn run_kernel_check(backend: &CudaBackend, name: &str, seed: u64) -> Option<CheckResult> {
    let (i, (n, f)) = CHECKS.iter().enumerate().find(|(_, (n, _))| *n == name)?;
    let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    Some(f(backend, &mut rng).unwrap_or_else(|e| CheckResult::failed(n, e.to_string())))
}

/// Runs every check on fresh inputs derived from `seed`.
pub fn run_kernel_checks(backend: &CudaBackend, seed: u64) -> Vec<CheckResult> {
    CHECKS
        .iter()
        .filter_map(|(n, _)| run_kernel_check(backend, n, seed))
        .collect()
}

/// Compares `gpu` with the CPU reference `cpu` (see the module documentation).
pub(crate) fn compare(name: &str, gpu: &[f32], cpu: &[f32], detail: String) -> CheckResult {
    if gpu.len() != cpu.len() {
        return CheckResult::failed(name, format!("length {} vs {}", gpu.len(), cpu.len()));
    }
    let finite: Vec<f64> = cpu
        .iter()
        .filter(|v| v.is_finite())
        .map(|v| f64::from(v.abs()))
        .collect();
    let mean = finite.iter().sum::<f64>() / finite.len().max(1) as f64;
    let floor = if mean > 0.0 { mean } else { 1.0 };
    let (mut worst, mut at, mut has_nan) = (0f64, 0usize, false);
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        if g.is_nan() {
            has_nan = true;
            continue;
        }
        let err = if g == c {
            0.0
        } else {
            (f64::from(g) - f64::from(c)).abs() / f64::from(c.abs()).max(floor)
        };
        if err.is_nan() || err > worst {
            worst = if err.is_nan() { f64::INFINITY } else { err };
            at = i;
        }
    }
    let passed = !has_nan && worst <= TOLERANCE;
    let worst_el = match (gpu.get(at), cpu.get(at)) {
        (Some(g), Some(c)) => format!("; worst at {at}: gpu {g} cpu {c}"),
        _ => String::new(),
    };
    CheckResult {
        name: name.to_string(),
        max_rel_err: worst,
        has_nan,
        passed,
        detail: format!("{detail}{worst_el}"),
    }
}

/// The worse of two results of one check (e.g. an output and an in-place buffer).
pub(crate) fn merge(name: &str, a: CheckResult, b: CheckResult) -> CheckResult {
    CheckResult {
        name: name.to_string(),
        max_rel_err: a.max_rel_err.max(b.max_rel_err),
        has_nan: a.has_nan || b.has_nan,
        passed: a.passed && b.passed,
        detail: format!("{} | {}", a.detail, b.detail),
    }
}

/// A small deterministic generator (splitmix64), so the checks need no extra dependency.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `n` values uniform in `[lo, hi)`, rounded to bf16.
    pub(crate) fn bf16_vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
                round_bf16(lo + (hi - lo) * u)
            })
            .collect()
    }
}

pub(crate) fn round_bf16(v: f32) -> f32 {
    bf16::from_f32(v).to_f32()
}

/// Times `reps` runs of `op` (after `warmup` untimed ones) with CUDA events on the
/// backend's stream; seconds per run.
fn time_on_stream(
    b: &CudaBackend,
    warmup: usize,
    reps: usize,
    mut op: impl FnMut() -> Result<(), CudaError>,
) -> Result<f64, CudaError> {
    for _ in 0..warmup {
        op()?;
    }
    b.synchronize()?;
    let ctx = b.context();
    let start = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let end = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let wall = Instant::now();
    start.record(b.stream())?;
    for _ in 0..reps {
        op()?;
    }
    end.record(b.stream())?;
    let ms = start.elapsed_ms(&end)?;
    b.synchronize()?;
    let secs = if ms > 0.0 {
        f64::from(ms) / 1e3
    } else {
        wall.elapsed().as_secs_f64()
    };
    Ok(secs / reps.max(1) as f64)
}

/// Device-to-device copy bandwidth in GB/s (10^9 bytes per second), counting the bytes
/// read and the bytes written, over 20 copies of `bytes` (rounded down to whole f32s)
/// after 3 warm-up copies, timed with CUDA events.
pub fn copy_bandwidth(backend: &CudaBackend, bytes: usize) -> Result<f64, CudaError> {
    let n = bytes / 4;
    if n == 0 {
        return Err(CudaError::Shape(
            "copy_bandwidth: fewer than 4 bytes".into(),
        ));
    }
    let src = DeviceBuffer::<f32>::zeros(backend, n)?;
    let mut dst = DeviceBuffer::<f32>::zeros(backend, n)?;
    let secs = time_on_stream(backend, 3, 20, || {
        backend.stream().memcpy_dtod(src.slice(), dst.slice_mut())?;
        Ok(())
    })?;
    Ok(2.0 * (n * 4) as f64 / secs / 1e9)
}

/// The bf16 cuBLAS GEMM rate in TFLOP/s (`2 m n k` per product, bf16 output) for
/// `[m, k] x [n, k]ᵀ`, over 10 products after 2 warm-up ones.
pub fn gemm_tflops(backend: &CudaBackend, m: usize, n: usize, k: usize) -> Result<f64, CudaError> {
    let mut rng = Rng::new(0x5EED);
    let a = DeviceBuffer::from_f32(backend, &rng.bf16_vec(m * k, -1.0, 1.0))?;
    let w = DeviceBuffer::from_f32(backend, &rng.bf16_vec(n * k, -1.0, 1.0))?;
    let mut out = DeviceBuffer::<bf16>::zeros(backend, m * n)?;
    let secs = time_on_stream(backend, 2, 10, || {
        matmul_bf16(backend, &a, &w, m, n, k, &mut out)
    })?;
    Ok(2.0 * m as f64 * n as f64 * k as f64 / secs / 1e12)
}

#[cfg(test)]
mod tests {
    use super::{compare, Rng, TOLERANCE};

    #[test]
    fn compare_flags_nan_and_large_errors_but_not_tiny_values() {
        let cpu = [1.0f32, -2.0, 1e-6, 0.0];
        let ok = compare("t", &[1.001, -2.002, 1e-3, -1e-3], &cpu, String::new());
        assert!(ok.passed && ok.max_rel_err < TOLERANCE, "{ok:?}");
        let nan = compare("t", &[1.0, f32::NAN, 1e-6, 0.0], &cpu, String::new());
        assert!(!nan.passed && nan.has_nan, "{nan:?}");
        let off = compare("t", &[1.1, -2.0, 1e-6, 0.0], &cpu, String::new());
        assert!(
            !off.passed && (off.max_rel_err - 0.1).abs() < 1e-6,
            "{off:?}"
        );
        let short = compare("t", &[1.0], &cpu, String::new());
        assert!(!short.passed);
    }

    #[test]
    fn compare_handles_infinities() {
        let inf = [f32::NEG_INFINITY, -1.0, -2.0];
        assert!(compare("t", &inf, &inf, String::new()).passed);
        let r = compare("t", &[-50.0, -1.0, -2.0], &inf, String::new());
        assert!(!r.passed, "{r:?}");
    }

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let (x, y) = (a.bf16_vec(1000, -2.0, 2.0), b.bf16_vec(1000, -2.0, 2.0));
        assert_eq!(x, y);
        assert!(x.iter().all(|v| (-2.0..=2.0).contains(v)));
        assert!(x.iter().all(|&v| half::bf16::from_f32(v).to_f32() == v));
        assert!((0..100).all(|_| a.below(3) < 3));
    }
}
