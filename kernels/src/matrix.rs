//! Row-major weight matrices in any supported [`DType`].

use std::fmt;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::error::{check_len, mul};
use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, DType, QK};
use crate::KernelError;

/// The storage of a [`Matrix`]: elements (float types) or 32-element blocks (quantized).
#[derive(Clone)]
pub enum WeightData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    Q8_0(Vec<BlockQ8_0>),
    Q4_0(Vec<BlockQ4_0>),
    Q4_1(Vec<BlockQ4_1>),
}

impl WeightData {
    pub fn dtype(&self) -> DType {
        match self {
            WeightData::F32(_) => DType::F32,
            WeightData::F16(_) => DType::F16,
            WeightData::BF16(_) => DType::BF16,
            WeightData::Q8_0(_) => DType::Q8_0,
            WeightData::Q4_0(_) => DType::Q4_0,
            WeightData::Q4_1(_) => DType::Q4_1,
        }
    }

    /// Number of storage units (elements or blocks).
    fn units(&self) -> usize {
        match self {
            WeightData::F32(v) => v.len(),
            WeightData::F16(v) => v.len(),
            WeightData::BF16(v) => v.len(),
            WeightData::Q8_0(v) => v.len(),
            WeightData::Q4_0(v) => v.len(),
            WeightData::Q4_1(v) => v.len(),
        }
    }
}

/// A row-major weight matrix of `rows` x `cols` (a linear layer's weight is
/// out_features x in_features).
#[derive(Clone)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: WeightData,
}

impl fmt::Debug for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Matrix")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("dtype", &self.dtype())
            .finish()
    }
}

/// Copies little-endian records of `N` bytes into typed values (no alignment assumed).
fn parse<T, const N: usize>(bytes: &[u8], f: impl Fn(&[u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(&a)
        })
        .collect()
}

impl Matrix {
    /// Wraps already-typed storage; its length must match `rows` x `cols`.
    pub fn new(rows: usize, cols: usize, data: WeightData) -> Result<Matrix, KernelError> {
        let dtype = data.dtype();
        dtype.row_bytes(cols)?;
        let units = mul("Matrix::new", rows, cols / dtype.block_elems())?;
        check_len("Matrix::new", "data", units, data.units())?;
        Ok(Matrix { rows, cols, data })
    }

    /// Parses little-endian bytes as stored in GGUF / safetensors (row-major, each row
    /// `dtype.row_bytes(cols)` bytes). `bytes` need not be aligned.
    pub fn from_bytes(
        dtype: DType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Matrix, KernelError> {
        let expected = mul("Matrix::from_bytes", rows, dtype.row_bytes(cols)?)?;
        check_len("Matrix::from_bytes", "bytes", expected, bytes.len())?;
        let data = match dtype {
            DType::F32 => WeightData::F32(parse(bytes, |a: &[u8; 4]| f32::from_le_bytes(*a))),
            DType::F16 => WeightData::F16(parse(bytes, |a: &[u8; 2]| f16::from_le_bytes(*a))),
            DType::BF16 => WeightData::BF16(parse(bytes, |a: &[u8; 2]| bf16::from_le_bytes(*a))),
            DType::Q8_0 => WeightData::Q8_0(parse(bytes, BlockQ8_0::from_le)),
            DType::Q4_0 => WeightData::Q4_0(parse(bytes, BlockQ4_0::from_le)),
            DType::Q4_1 => WeightData::Q4_1(parse(bytes, BlockQ4_1::from_le)),
        };
        Matrix::new(rows, cols, data)
    }

    /// An f32 matrix from row-major values.
    pub fn from_f32(rows: usize, cols: usize, data: Vec<f32>) -> Result<Matrix, KernelError> {
        Matrix::new(rows, cols, WeightData::F32(data))
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// The typed storage.
    pub fn data(&self) -> &WeightData {
        &self.data
    }

    /// Storage units (elements or blocks) per row.
    pub(crate) fn units_per_row(&self) -> usize {
        self.cols / self.dtype().block_elems()
    }

    /// Writes row `r` as f32 into `out` (`out.len() == cols`).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), KernelError> {
        if r >= self.rows {
            return Err(KernelError::RowOutOfRange {
                row: r,
                rows: self.rows,
            });
        }
        check_len("dequantize_row", "out", self.cols, out.len())?;
        self.decode_rows(r, out);
        Ok(())
    }

    /// Decodes the rows starting at `r0` into `out` (whole rows; `out.len()` must be a
    /// multiple of `cols` and the rows must exist — checked by the callers).
    pub(crate) fn decode_rows(&self, r0: usize, out: &mut [f32]) {
        let upr = self.units_per_row();
        let units = out.len() / self.cols.max(1) * upr;
        let range = r0 * upr..r0 * upr + units;
        match &self.data {
            WeightData::F32(v) => out.copy_from_slice(&v[range]),
            WeightData::F16(v) => v[range].convert_to_f32_slice(out),
            WeightData::BF16(v) => v[range].convert_to_f32_slice(out),
            WeightData::Q8_0(v) => decode_blocks(&v[range], out, BlockQ8_0::dequantize),
            WeightData::Q4_0(v) => decode_blocks(&v[range], out, BlockQ4_0::dequantize),
            WeightData::Q4_1(v) => decode_blocks(&v[range], out, BlockQ4_1::dequantize),
        }
    }

    /// The whole matrix as row-major f32.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        if !out.is_empty() {
            self.decode_rows(0, &mut out);
        }
        out
    }
}

fn decode_blocks<B>(blocks: &[B], out: &mut [f32], f: impl Fn(&B, &mut [f32; QK])) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let mut tmp = [0f32; QK];
        f(b, &mut tmp);
        o.copy_from_slice(&tmp);
    }
}
