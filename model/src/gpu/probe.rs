//! Diagnostics for the GPU check: the step's weight GEMMs alone, so a
//! measured step time can be split into the GEMMs and everything else
//! (attention, norms, rotary, launches, host work).

use std::time::Instant;

use half::bf16;
use weft_kernels::cuda::{matmul_bf16, CudaBackend, DeviceBuffer};

use super::{GpuError, GpuRankModel};

impl GpuRankModel {
    /// Mean milliseconds of the weight GEMMs of one step over `tokens`
    /// rows (every layer's Q/K/V, O, gate/up and down, then the LM head
    /// over one row), after one warm-up pass; inputs are zeros.
    pub fn time_step_gemms(
        &self,
        b: &CudaBackend,
        tokens: usize,
        iters: usize,
    ) -> Result<f64, GpuError> {
        let d = self.dims;
        let h = self.cfg.hidden_size;
        let (qw, kvw) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
        let shapes = [
            (qw + 2 * kvw, h),
            (h, qw),
            (2 * d.intermediate, h),
            (h, d.intermediate),
        ];
        // One zeroed input and output per shape, allocated before timing.
        let mut bufs = Vec::with_capacity(shapes.len());
        for &(n, k) in &shapes {
            bufs.push((
                DeviceBuffer::<bf16>::zeros(b, tokens * k)?,
                DeviceBuffer::<bf16>::zeros(b, tokens * n)?,
            ));
        }
        let last = DeviceBuffer::<bf16>::zeros(b, h)?;
        let mut logits = DeviceBuffer::<f32>::zeros(b, d.vocab)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let mut t0 = Instant::now();
        for it in 0..=iters {
            if it == 1 {
                b.synchronize()?;
                t0 = Instant::now();
            }
            for w in &self.layers {
                let weights = [&w.qkv, &w.o, &w.gate_up, &w.down];
                for ((weight, &(n, k)), (a, o)) in weights.iter().zip(&shapes).zip(&mut bufs) {
                    matmul_bf16(b, a, weight, tokens, n, k, o)?;
                }
            }
            matmul_bf16(b, &last, head, 1, d.vocab, h, &mut logits)?;
        }
        b.synchronize()?;
        Ok(t0.elapsed().as_secs_f64() * 1e3 / iters.max(1) as f64)
    }
}
