use super::reference::{decode, random_bytes};
use super::rng;
use crate::{f16, BlockQ4_0, BlockQ4_1, BlockQ8_0, DType, KernelError, Matrix, WeightData};

#[test]
fn dtype_properties() {
    let expect = [
        (DType::F32, 1, 4, "f32"),
        (DType::F16, 1, 2, "f16"),
        (DType::BF16, 1, 2, "bf16"),
        (DType::Q8_0, 32, 34, "q8_0"),
        (DType::Q4_0, 32, 18, "q4_0"),
        (DType::Q4_1, 32, 20, "q4_1"),
    ];
    for (d, elems, bytes, name) in expect {
        assert_eq!(d.block_elems(), elems);
        assert_eq!(d.block_bytes(), bytes);
        assert_eq!(d.name(), name);
        assert_eq!(d.to_string(), name);
        assert_eq!(d.is_quantized(), elems == 32);
        assert_eq!(d.row_bytes(64).expect("multiple of 32"), 64 / elems * bytes);
    }
    assert_eq!(std::mem::size_of::<BlockQ8_0>(), 34);
    assert_eq!(std::mem::size_of::<BlockQ4_0>(), 18);
    assert_eq!(std::mem::size_of::<BlockQ4_1>(), 20);
    let err = DType::Q4_0.row_bytes(33).expect_err("not a multiple of 32");
    assert!(matches!(
        err,
        KernelError::BadLength {
            got: 33,
            multiple: 32,
            ..
        }
    ));
    assert_eq!(DType::F16.row_bytes(33).expect("float"), 66);
}

/// `from_bytes` then `to_f32` / `dequantize_row` reproduces the spec's values exactly,
/// also from a misaligned byte slice.
#[test]
fn from_bytes_round_trip_all_dtypes() {
    for (i, dtype) in DType::ALL.into_iter().enumerate() {
        let (rows, cols) = (5, 96);
        let bytes = random_bytes(&mut rng(i as u64), dtype, rows, cols);
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(&bytes);
        let m = Matrix::from_bytes(dtype, rows, cols, &shifted[1..]).expect("valid");
        assert_eq!((m.rows(), m.cols(), m.dtype()), (rows, cols, dtype));
        let want: Vec<f32> = decode(dtype, &bytes).iter().map(|&v| v as f32).collect();
        assert_eq!(m.to_f32(), want, "{dtype}");
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            m.dequantize_row(r, &mut row).expect("row");
            assert_eq!(row, want[r * cols..(r + 1) * cols], "{dtype} row {r}");
        }
        // The typed storage holds the same bytes (little-endian machines).
        if cfg!(target_endian = "little") {
            let stored: &[u8] = match m.data() {
                WeightData::F32(v) => bytemuck::cast_slice(v),
                WeightData::F16(v) => bytemuck::cast_slice(v),
                WeightData::BF16(v) => bytemuck::cast_slice(v),
                WeightData::Q8_0(v) => bytemuck::cast_slice(v),
                WeightData::Q4_0(v) => bytemuck::cast_slice(v),
                WeightData::Q4_1(v) => bytemuck::cast_slice(v),
            };
            assert_eq!(stored, &bytes[..], "{dtype} storage");
        }
    }
}

#[test]
fn from_bytes_rejects_bad_lengths() {
    for dtype in DType::ALL {
        let good = dtype.row_bytes(64).expect("row") * 3;
        for len in [good - 1, good + 1, 0] {
            let err = Matrix::from_bytes(dtype, 3, 64, &vec![0u8; len]).expect_err("bad length");
            assert!(
                matches!(err, KernelError::ShapeMismatch { what: "bytes", got, .. } if got == len),
                "{dtype}: {err}"
            );
        }
    }
    let err = Matrix::from_bytes(DType::Q8_0, 2, 40, &[0u8; 10]).expect_err("cols % 32");
    assert!(matches!(err, KernelError::BadLength { .. }), "{err}");
    let err = Matrix::from_bytes(DType::F32, usize::MAX, 2, &[]).expect_err("overflow");
    assert!(matches!(err, KernelError::InvalidArgument { .. }), "{err}");
}

#[test]
fn matrix_constructors_and_row_errors() {
    let m = Matrix::from_f32(2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).expect("valid");
    assert_eq!(m.to_f32(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert!(Matrix::from_f32(2, 3, vec![0.0; 5]).is_err());
    let mut row = [0f32; 3];
    assert!(matches!(
        m.dequantize_row(2, &mut row),
        Err(KernelError::RowOutOfRange { row: 2, rows: 2 })
    ));
    assert!(m.dequantize_row(0, &mut [0f32; 2]).is_err());
    let blocks = vec![
        BlockQ4_0 {
            d: f16::from_f32(0.5),
            qs: [0x1F; 16]
        };
        2
    ];
    let q = Matrix::new(1, 64, WeightData::Q4_0(blocks)).expect("valid");
    let vals = q.to_f32();
    assert_eq!(vals[0], (15.0 - 8.0) * 0.5);
    assert_eq!(vals[16], (1.0 - 8.0) * 0.5);
    assert!(Matrix::new(2, 64, WeightData::Q8_0(vec![])).is_err());
    assert!(format!("{q:?}").contains("q4_0") || format!("{q:?}").contains("Q4_0"));
}
