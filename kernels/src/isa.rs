//! Runtime selection of the instruction set the kernels use.

use std::sync::OnceLock;

/// The instruction set a kernel call uses. `Avx2` implies AVX2, FMA and F16C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// Portable Rust, written so LLVM can auto-vectorize it.
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Isa {
    /// The best instruction set this CPU supports (cached). Tests reach the
    /// portable path through the `*_with(Isa::Scalar, ..)` entry points.
    pub(crate) fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(Isa::best_supported)
    }

    fn best_supported() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// Every instruction set usable on this CPU (for tests).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        if Isa::best_supported() != Isa::Scalar {
            v.push(Isa::best_supported());
        }
        v
    }
}

/// The name of the instruction set the CPU kernels use on this machine:
/// `"avx2+fma+f16c"` or `"portable"`.
pub fn cpu_isa() -> &'static str {
    match Isa::detect() {
        Isa::Scalar => "portable",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => "avx2+fma+f16c",
    }
}
