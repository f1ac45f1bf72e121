//! Flat device buffers (the CUDA counterpart of the `&[f32]` slices the CPU kernels take).

use cudarc::driver::{CudaSlice, CudaView, DeviceRepr, ValidAsZeroBits};
use half::bf16;
use half::slice::HalfFloatSliceExt;

use super::device::CudaBackend;
use super::error::{check_len, CudaError};

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::bf16 {}
    impl Sealed for f32 {}
    impl Sealed for u32 {}
    impl Sealed for i32 {}
    impl Sealed for i64 {}
}

/// Element types a [`DeviceBuffer`] can hold.
pub trait DeviceElem:
    DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static + sealed::Sealed
{
}
impl DeviceElem for bf16 {}
impl DeviceElem for f32 {}
impl DeviceElem for u32 {}
impl DeviceElem for i32 {}
impl DeviceElem for i64 {}

/// A flat buffer of `len` elements on one device, owned. Operations check lengths against
/// the sizes they are given, as the CPU kernels do with slices. (A zero-length buffer
/// holds one unused element: the driver does not allocate zero bytes.)
///
/// `len()` is never more than the allocation, even if a caller swaps the `CudaSlice`
/// behind [`DeviceBuffer::slice_mut`] for a shorter one, so the length checks of every
/// operation keep the kernels inside their buffers.
pub struct DeviceBuffer<T: DeviceElem> {
    buf: CudaSlice<T>,
    requested: usize,
}

impl<T: DeviceElem> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("type", &std::any::type_name::<T>())
            .field("len", &self.len())
            .finish()
    }
}

impl<T: DeviceElem> DeviceBuffer<T> {
    /// `len` zeros.
    pub fn zeros(b: &CudaBackend, len: usize) -> Result<Self, CudaError> {
        let buf = b.stream().alloc_zeros::<T>(len.max(1))?;
        Ok(DeviceBuffer {
            buf,
            requested: len,
        })
    }

    /// `len` copies of `value` (used, for instance, to poison outputs with NaN).
    pub fn filled(b: &CudaBackend, len: usize, value: T) -> Result<Self, CudaError> {
        Self::from_slice(b, &vec![value; len])
    }

    /// A copy of `data`.
    pub fn from_slice(b: &CudaBackend, data: &[T]) -> Result<Self, CudaError> {
        let mut out = Self::zeros(b, data.len())?;
        out.upload(b, data)?;
        Ok(out)
    }

    /// Overwrites the buffer with `data` (`data.len() == self.len()`).
    pub fn upload(&mut self, b: &CudaBackend, data: &[T]) -> Result<(), CudaError> {
        let len = self.len();
        check_len("DeviceBuffer::upload", len, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let mut dst = self.buf.slice_mut(0..len);
        b.stream().memcpy_htod(data, &mut dst)?;
        Ok(())
    }

    /// A host copy (waits for the stream).
    pub fn to_vec(&self, b: &CudaBackend) -> Result<Vec<T>, CudaError> {
        let mut out = vec![T::default(); self.len()];
        if !out.is_empty() {
            b.stream().memcpy_dtoh(&self.view(), &mut out)?;
        }
        b.synchronize()?;
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.requested.min(self.buf.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole allocation (for kernel arguments).
    pub fn slice(&self) -> &CudaSlice<T> {
        &self.buf
    }

    pub fn slice_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.buf
    }

    /// The `len` valid elements as a view.
    pub fn view(&self) -> CudaView<'_, T> {
        self.buf.slice(0..self.len())
    }
}

impl DeviceBuffer<bf16> {
    /// `data` rounded to bf16 (round to nearest even).
    pub fn from_f32(b: &CudaBackend, data: &[f32]) -> Result<Self, CudaError> {
        let mut h = vec![bf16::ZERO; data.len()];
        h.convert_from_f32_slice(data);
        Self::from_slice(b, &h)
    }

    /// A host copy widened to f32.
    pub fn to_f32(&self, b: &CudaBackend) -> Result<Vec<f32>, CudaError> {
        let h = self.to_vec(b)?;
        let mut out = vec![0f32; h.len()];
        h.convert_to_f32_slice(&mut out);
        Ok(out)
    }
}

impl DeviceBuffer<f32> {
    /// `len` elements of f32 scratch left uninitialized (the kernels that use it write
    /// every element before reading it).
    pub(crate) fn scratch(b: &CudaBackend, len: usize) -> Result<Self, CudaError> {
        // SAFETY: f32 has no invalid bit patterns and the memory is device memory that
        // Rust never reads directly; its only users write before they read.
        let buf = unsafe { b.stream().alloc::<f32>(len.max(1)) }?;
        Ok(DeviceBuffer {
            buf,
            requested: len,
        })
    }
}
