//! The collectives of [`NcclComm`]: enqueue on the communicator's stream, then a bounded wait (see the module docs
//! of [`super`]).

use std::ffi::c_void;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};
use cudarc::nccl::sys;

use super::ffi::{self, Progress};
use super::{wait, Health, NcclComm, NcclError};

impl NcclComm {
    /// In place: `buf` becomes the element-wise sum over ranks (NCCL's reduction order, not bit-identical to
    /// [`super::TcpComm`]).
    pub fn all_reduce_sum_f32<B: DevicePtrMut<f32>>(
        &mut self,
        buf: &mut B,
    ) -> Result<(), NcclError> {
        self.all_reduce_sum("all_reduce_sum_f32", buf, sys::ncclDataType_t::ncclFloat32)
    }

    /// In place, bf16 (NCCL accumulates bf16 sums in bf16 or wider depending on the algorithm).
    pub fn all_reduce_sum_bf16<B: DevicePtrMut<half::bf16>>(
        &mut self,
        buf: &mut B,
    ) -> Result<(), NcclError> {
        self.all_reduce_sum(
            "all_reduce_sum_bf16",
            buf,
            sys::ncclDataType_t::ncclBfloat16,
        )
    }

    /// Each rank contributes `local` (same length everywhere); `out` (world_size x local.len()) receives every
    /// rank's contribution, rank-major.
    pub fn all_gather_f32<S: DevicePtr<f32>, R: DevicePtrMut<f32>>(
        &mut self,
        local: &S,
        out: &mut R,
    ) -> Result<(), NcclError> {
        const OP: &str = "all_gather_f32";
        let comm = self.usable()?;
        let count = local.len();
        if count.checked_mul(self.world_size) != Some(out.len()) {
            let msg = format!(
                "{OP}: out has {} elements, expected world_size {} x local {count}",
                out.len(),
                self.world_size
            );
            return Err(self.fail(NcclError::InvalidArgument(msg)));
        }
        self.check_device(OP, local.stream())?;
        self.check_device(OP, out.stream())?;
        if count == 0 {
            return Ok(());
        }
        let stream = Arc::clone(&self.stream);
        let (src, _src_guard) = local.device_ptr(&stream);
        let (dst, _dst_guard) = out.device_ptr_mut(&stream);
        // SAFETY: `comm` is live; `src` holds `count` f32 and `dst` world_size x count f32 on this comm's device
        // (checked above); both stay borrowed (guards alive) until `finish` has waited for the collective.
        let rc = unsafe {
            sys::ncclAllGather(
                src as *const c_void,
                dst as *mut c_void,
                count,
                sys::ncclDataType_t::ncclFloat32,
                comm,
                stream.cu_stream() as sys::cudaStream_t,
            )
        };
        self.finish(OP, rc)
    }

    /// Rank `root`'s `buf` is copied to every rank (in place).
    pub fn broadcast_f32<B: DevicePtrMut<f32>>(
        &mut self,
        buf: &mut B,
        root: usize,
    ) -> Result<(), NcclError> {
        const OP: &str = "broadcast_f32";
        let comm = self.usable()?;
        if root >= self.world_size {
            let msg = format!("{OP}: root {root} outside world size {}", self.world_size);
            return Err(self.fail(NcclError::InvalidArgument(msg)));
        }
        self.check_device(OP, buf.stream())?;
        let count = buf.len();
        if count == 0 {
            return Ok(());
        }
        let stream = Arc::clone(&self.stream);
        let (ptr, _guard) = buf.device_ptr_mut(&stream);
        // SAFETY: `comm` is live; `ptr` holds `count` f32 on this comm's device and stays borrowed until `finish`
        // has waited; root < world_size <= i32::MAX (checked here and in `init`).
        let rc = unsafe {
            sys::ncclBroadcast(
                ptr as *const c_void,
                ptr as *mut c_void,
                count,
                sys::ncclDataType_t::ncclFloat32,
                root as i32,
                comm,
                stream.cu_stream() as sys::cudaStream_t,
            )
        };
        self.finish(OP, rc)
    }

    /// Returns once every rank has reached the barrier (an all-reduce of one scratch f32).
    pub fn barrier(&mut self) -> Result<(), NcclError> {
        let Some(mut scratch) = self.scratch.take() else {
            // Only possible if an earlier barrier panicked midway; the group state is unknown.
            return Err(self.fail(NcclError::InvalidArgument("barrier scratch missing".into())));
        };
        let r = self.all_reduce_sum("barrier", &mut scratch, sys::ncclDataType_t::ncclFloat32);
        self.scratch = Some(scratch);
        r
    }

    fn all_reduce_sum<T, B: DevicePtrMut<T>>(
        &mut self,
        op: &'static str,
        buf: &mut B,
        dtype: sys::ncclDataType_t,
    ) -> Result<(), NcclError> {
        let comm = self.usable()?;
        self.check_device(op, buf.stream())?;
        let count = buf.len();
        if count == 0 {
            return Ok(());
        }
        let stream = Arc::clone(&self.stream);
        let (ptr, _guard) = buf.device_ptr_mut(&stream);
        // SAFETY: `comm` is live; `ptr` holds `count` elements of `dtype` (the caller picks the dtype matching T) on
        // this comm's device; in-place all-reduce is allowed by NCCL; the buffer stays borrowed until `finish` has
        // waited for completion.
        let rc = unsafe {
            sys::ncclAllReduce(
                ptr as *const c_void,
                ptr as *mut c_void,
                count,
                dtype,
                sys::ncclRedOp_t::ncclSum,
                comm,
                stream.cu_stream() as sys::cudaStream_t,
            )
        };
        self.finish(op, rc)
    }

    /// The live handle with the stream's context bound to this thread, or `Aborted` if broken.
    fn usable(&mut self) -> Result<sys::ncclComm_t, NcclError> {
        if let Health::Broken(reason) = &self.health {
            return Err(NcclError::Aborted {
                reason: reason.clone(),
            });
        }
        if let Err(e) = self.stream.context().bind_to_thread() {
            return Err(self.fail(NcclError::cuda("bind_context", e)));
        }
        Ok(self.raw.0)
    }

    /// The buffer must live on this communicator's device.
    fn check_device(&mut self, op: &'static str, buf: &Arc<CudaStream>) -> Result<(), NcclError> {
        let (have, want) = (buf.context().ordinal(), self.stream.context().ordinal());
        if have == want {
            return Ok(());
        }
        let msg = format!("{op}: buffer is on device {have}, communicator on device {want}");
        Err(self.fail(NcclError::InvalidArgument(msg)))
    }

    /// After enqueueing: waits (bounded) until NCCL has finished enqueueing (non-blocking mode may still be working
    /// on it) and then until the stream has executed the collective, watching NCCL's async error throughout.
    fn finish(&mut self, op: &'static str, rc: sys::ncclResult_t) -> Result<(), NcclError> {
        let start = Instant::now();
        let waited = ffi::check(op, rc, self.raw.0).and_then(|_| self.wait_done(op, start));
        waited.map_err(|e| self.fail(e))
    }

    fn wait_done(&self, op: &'static str, start: Instant) -> Result<(), NcclError> {
        let raw = &self.raw;
        // Phase 1: the enqueue itself (connection setup on first use can make it asynchronous).
        wait::poll_until(op, start, self.timeout, || {
            Ok(raw.async_state(op)? == Progress::Done)
        })?;
        // Phase 2: the collective's kernels on the stream.
        self.done
            .record(&self.stream)
            .map_err(|e| NcclError::cuda("event_record", e))?;
        let done = &self.done;
        wait::poll_until(op, start, self.timeout, || {
            if raw.async_state(op)? == Progress::InProgress {
                return Ok(false);
            }
            done.try_is_complete()
                .map_err(|e| NcclError::cuda("event_query", e))
        })
    }
}
