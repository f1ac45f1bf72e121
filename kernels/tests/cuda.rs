//! The CUDA backend against the CPU kernels, on every CUDA device present.
//!
//! Each kernel test is written once (as a check of `weft_kernels::cuda::check`, which
//! makes fresh inputs, poisons the outputs and compares with the CPU kernel) and runs on
//! every device. Without a driver or device each device test prints
//! `SKIPPED: no CUDA device (...)` and passes; the tests of the no-driver path then do the
//! real work. A device that is present but cannot be opened fails the tests.
#![cfg(feature = "cuda")]

use std::path::PathBuf;

use weft_kernels::cuda::{
    self, attn, check, ops, CudaBackend, CudaConfig, CudaError, DeviceBuffer, PagedBatch, SeqSpec,
};
use weft_kernels::{bf16, check_device, Device, KernelError};

const SEED: u64 = 0x5EED_2026;

/// A scratch directory for this test process's kernel cache.
fn cache_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("weft-cuda-test-{tag}-{}", std::process::id()))
}

/// One backend per device, or why there is none.
fn backends() -> Result<Vec<CudaBackend>, String> {
    let n = cuda::device_count();
    if n == 0 {
        return Err(match cuda::probe(0) {
            Err(e) => e.to_string(),
            Ok(_) => "the driver reports no device".into(),
        });
    }
    Ok((0..n)
        .map(|ordinal| {
            let cfg = CudaConfig {
                ordinal,
                ptx_cache_dir: Some(cache_dir("shared")),
            };
            CudaBackend::new(cfg).unwrap_or_else(|e| panic!("cuda:{ordinal} present but: {e}"))
        })
        .collect())
}

/// Runs `body` on every device, or prints why it cannot.
fn on_every_device(body: impl Fn(&CudaBackend)) {
    match backends() {
        Ok(all) => all.iter().for_each(body),
        Err(why) => println!("SKIPPED: no CUDA device ({why})"),
    }
}

/// A test running the named kernel check on every device.
macro_rules! device_check {
    ($($test:ident => $check:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                on_every_device(|b| {
                    let r = check::run_kernel_check(b, $check, SEED).expect("a known check");
                    println!("cuda:{}: {r:?}", b.info().ordinal);
                    assert!(r.passed, "cuda:{}: {r:?}", b.info().ordinal);
                });
            }
        )*
        /// Every check of the library has a test here.
        #[test]
        fn every_check_has_a_test() {
            let mut tested = vec![$($check),*];
            let mut all = check::kernel_check_names();
            tested.sort_unstable();
            all.sort_unstable();
            assert_eq!(tested, all);
        }
    };
}

device_check! {
    embedding => "embedding",
    rms_norm => "rms_norm",
    add_rms_norm => "add_rms_norm",
    rope_half => "rope_half",
    rope_interleaved => "rope_interleaved",
    qkv_rope => "qkv_rope",
    fill_random => "fill_random",
    silu_mul => "silu_mul",
    silu_mul_fused => "silu_mul_fused",
    paged_write => "paged_write",
    paged_attention_decode => "paged_attention_decode",
    paged_attention_decode_gqa16 => "paged_attention_decode_gqa16",
    paged_attention_prefill => "paged_attention_prefill",
    paged_attention_prefill_gemm => "paged_attention_prefill_gemm",
    paged_attention_mixed => "paged_attention_mixed",
    paged_attention_flash => "paged_attention_flash",
    matmul_bf16 => "matmul_bf16",
    matmul_bf16_f32_out => "matmul_bf16_f32_out",
    argmax_logprob => "argmax_logprob",
    topk_logprobs => "topk_logprobs",
}

#[test]
fn without_a_driver_the_backend_is_a_typed_error() {
    if cuda::driver_present() {
        println!("SKIPPED: a CUDA driver is present; the no-driver path is not reachable");
        return;
    }
    let cfg = CudaConfig {
        ordinal: 0,
        ptx_cache_dir: None,
    };
    let err = CudaBackend::new(cfg).expect_err("no driver, no backend");
    assert!(matches!(err, CudaError::NoDriver(_)), "{err:?}");
    assert!(err.to_string().contains("libcuda"), "{err}");
    assert!(matches!(cuda::probe(0), Err(CudaError::NoDriver(_))));
    assert_eq!(cuda::device_count(), 0);
}

#[test]
fn an_absent_ordinal_is_a_typed_error() {
    let cfg = CudaConfig {
        ordinal: 4096,
        ptx_cache_dir: None,
    };
    let err = CudaBackend::new(cfg).expect_err("no machine has 4097 GPUs");
    assert!(
        matches!(err, CudaError::NoDriver(_) | CudaError::NoDevice(_)),
        "{err:?}"
    );
}

#[test]
fn check_device_probes_the_device() {
    let result = check_device(Device::Cuda(0));
    if cuda::device_count() > 0 {
        result.expect("a device is present");
        return;
    }
    let err = result.expect_err("no device here");
    let KernelError::CudaUnavailable(msg) = &err else {
        panic!("expected CudaUnavailable, got {err:?}");
    };
    assert!(msg.starts_with("cuda:0: "), "{msg}");
    if !cuda::driver_present() {
        assert!(msg.contains("no CUDA driver"), "{msg}");
    }
    let err = check_device(Device::Cuda(7)).expect_err("no eighth device");
    assert!(matches!(err, KernelError::CudaUnavailable(_)), "{err:?}");
}

#[test]
fn cuda_errors_map_onto_kernel_errors() {
    let e: KernelError = CudaError::Shape("x".into()).into();
    assert!(
        matches!(e, KernelError::InvalidArgument { op: "cuda", .. }),
        "{e:?}"
    );
    let e: KernelError = CudaError::NoDriver("gone".into()).into();
    assert!(
        matches!(&e, KernelError::CudaUnavailable(m) if m.contains("gone")),
        "{e:?}"
    );
}

#[test]
fn bad_shapes_are_typed_errors_on_device() {
    on_every_device(|b| {
        let shape = |r: Result<(), CudaError>| {
            assert!(matches!(r, Err(CudaError::Shape(_))), "{r:?}");
        };
        let x = DeviceBuffer::<bf16>::zeros(b, 10).expect("alloc");
        let w = DeviceBuffer::<bf16>::zeros(b, 3).expect("alloc");
        let mut out = DeviceBuffer::<bf16>::zeros(b, 10).expect("alloc");
        shape(ops::rms_norm(b, &x, &w, 1e-5, &mut out));
        shape(cuda::matmul_bf16(b, &x, &w, 2, 2, 5, &mut out));
        let logits = DeviceBuffer::<f32>::zeros(b, 40).expect("alloc");
        let mut ids = DeviceBuffer::<u32>::zeros(b, 42).expect("alloc");
        let mut lp = DeviceBuffer::<f32>::zeros(b, 42).expect("alloc");
        shape(ops::topk_logprobs(b, &logits, 20, 21, &mut ids, &mut lp));
        let table = [0u32, 9];
        let seq = SeqSpec {
            block_table: &table,
            start_pos: 0,
            n_tokens: 20,
        };
        let err = PagedBatch::new(b, 16, 4, &[seq]).expect_err("block 9 of 4");
        assert!(matches!(err, CudaError::Shape(_)), "{err:?}");
        let err = attn::PagedKvCache::new(b, 4, 16, 2, 258).expect_err("head_dim 258");
        assert!(matches!(err, CudaError::Shape(_)), "{err:?}");
    });
}

#[test]
fn kernel_images_are_cached_on_disk() {
    on_every_device(|b| {
        let dir = cache_dir(&format!("disk{}", b.info().ordinal));
        let _ = std::fs::remove_dir_all(&dir);
        let open = || {
            CudaBackend::new(CudaConfig {
                ordinal: b.info().ordinal,
                ptx_cache_dir: Some(dir.clone()),
            })
            .expect("open")
        };
        let first = open();
        first.preload().expect("compile every program");
        let s1 = first.cache_stats();
        assert!(s1.compiled >= 3 && s1.disk_hits == 0, "{s1:?}");
        assert_eq!(s1.disk_write_errors, 0, "{s1:?}");
        let second = open();
        second.preload().expect("load every program");
        let s = second.cache_stats();
        assert_eq!(s.disk_hits, 3, "{s:?}");
        if s1.ptx_fallbacks == 0 {
            assert_eq!(s.compiled, 0, "{s:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn copy_bandwidth_and_gemm_rate_are_measured() {
    on_every_device(|b| {
        let gbs = cuda::copy_bandwidth(b, 64 << 20).expect("copy");
        let tflops = cuda::gemm_tflops(b, 512, 512, 512).expect("gemm");
        println!(
            "cuda:{}: copy {gbs:.0} GB/s, bf16 gemm {tflops:.1} TFLOP/s",
            b.info().ordinal
        );
        assert!(gbs.is_finite() && gbs > 0.0);
        assert!(tflops.is_finite() && tflops > 0.0);
    });
}
