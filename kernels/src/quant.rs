//! Data types and the GGML-compatible quantized block layouts.

use std::fmt;

use bytemuck::{Pod, Zeroable};
use half::f16;

use crate::KernelError;

/// Elements per quantized block (all GGML formats supported here use 32).
pub const QK: usize = 32;

/// GGML `block_q8_0`: 32 signed bytes with one f16 scale; `value_j = qs[j] * d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; QK],
}

/// GGML `block_q4_0`: 32 nibbles with one f16 scale; `value_j = (nib_j - 8) * d`.
/// Nibble order: `nib_j = qs[j] & 0x0F` for `j < 16`, `qs[j - 16] >> 4` otherwise.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; QK / 2],
}

/// GGML `block_q4_1`: 32 nibbles with an f16 scale and minimum; `value_j = nib_j * d + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

/// Unpacks the 32 nibbles of a 4-bit block in GGML order.
#[inline(always)]
pub(crate) fn nibbles(qs: &[u8; QK / 2]) -> [u8; QK] {
    let mut out = [0u8; QK];
    let (lo, hi) = out.split_at_mut(QK / 2);
    for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(qs) {
        *l = q & 0x0F;
        *h = q >> 4;
    }
    out
}

impl BlockQ8_0 {
    /// The 32 values of this block.
    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = self.d.to_f32();
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = f32::from(q) * d;
        }
    }

    pub(crate) fn from_le(b: &[u8; 34]) -> Self {
        let mut qs = [0i8; QK];
        for (q, &byte) in qs.iter_mut().zip(&b[2..]) {
            *q = byte as i8;
        }
        BlockQ8_0 {
            d: f16::from_le_bytes([b[0], b[1]]),
            qs,
        }
    }
}

impl BlockQ4_0 {
    /// The 32 values of this block.
    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let d = self.d.to_f32();
        for (o, n) in out.iter_mut().zip(nibbles(&self.qs)) {
            *o = (f32::from(n) - 8.0) * d;
        }
    }

    pub(crate) fn from_le(b: &[u8; 18]) -> Self {
        let mut qs = [0u8; QK / 2];
        qs.copy_from_slice(&b[2..]);
        BlockQ4_0 {
            d: f16::from_le_bytes([b[0], b[1]]),
            qs,
        }
    }
}

impl BlockQ4_1 {
    /// The 32 values of this block.
    pub fn dequantize(&self, out: &mut [f32; QK]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (o, n) in out.iter_mut().zip(nibbles(&self.qs)) {
            *o = f32::from(n) * d + m;
        }
    }

    pub(crate) fn from_le(b: &[u8; 20]) -> Self {
        let mut qs = [0u8; QK / 2];
        qs.copy_from_slice(&b[4..]);
        BlockQ4_1 {
            d: f16::from_le_bytes([b[0], b[1]]),
            m: f16::from_le_bytes([b[2], b[3]]),
            qs,
        }
    }
}

/// The element type of a weight matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
}

impl DType {
    /// All data types, in declaration order.
    pub const ALL: [DType; 6] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
    ];

    /// Elements per storage block: 1 for float types, 32 for quantized ones.
    pub fn block_elems(self) -> usize {
        if self.is_quantized() {
            QK
        } else {
            1
        }
    }

    /// Bytes per storage block.
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => std::mem::size_of::<BlockQ8_0>(),
            DType::Q4_0 => std::mem::size_of::<BlockQ4_0>(),
            DType::Q4_1 => std::mem::size_of::<BlockQ4_1>(),
        }
    }

    /// Bytes of one row of `cols` elements; an error if `cols` is not a multiple of
    /// [`DType::block_elems`].
    pub fn row_bytes(self, cols: usize) -> Result<usize, KernelError> {
        let be = self.block_elems();
        if !cols.is_multiple_of(be) {
            return Err(KernelError::BadLength {
                op: "row_bytes",
                what: "cols",
                got: cols,
                multiple: be,
            });
        }
        crate::error::mul("row_bytes", cols / be, self.block_bytes())
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Q8_0 | DType::Q4_0 | DType::Q4_1)
    }

    /// Lower-case GGML-style name: `f32`, `f16`, `bf16`, `q8_0`, `q4_0`, `q4_1`.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
