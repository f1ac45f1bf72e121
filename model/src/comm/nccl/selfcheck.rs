//! A one-GPU smoke test of the whole NCCL path (library, id, non-blocking init, each collective, bounded waits,
//! teardown), for a GPU check binary. With world size 1 every collective is the identity (or a copy), so the
//! expected results are known exactly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{ffi, NcclComm, NcclConfig, NcclError, NcclId};

/// Elements of each buffer the self-check reduces (16 Mi: 64 MiB of f32, 32 MiB of bf16).
pub const SELFCHECK_ELEMENTS: usize = 16 * 1024 * 1024;

/// Outcome of [`selfcheck_world_size_one`].
#[derive(Clone, Debug)]
pub struct SelfCheck {
    /// Every collective returned the expected values bit for bit.
    pub ok: bool,
    /// Elements per buffer ([`SELFCHECK_ELEMENTS`]).
    pub elements: usize,
    /// Wall time of one f32 all-reduce of `elements` values (after a warm-up one), enqueue to completion.
    pub micros: u64,
    /// Wall time of one bf16 all-reduce of `elements` values.
    pub bf16_micros: u64,
    /// `ncclGetVersion` of the loaded library (e.g. 22805).
    pub nccl_version: i32,
    /// One line per check that did not match (empty when `ok`).
    pub failures: Vec<String>,
}

/// Number of CUDA devices; 0 when the driver library is missing or reports none (never panics).
pub fn cuda_device_count() -> usize {
    if !ffi::driver_present() {
        return 0;
    }
    CudaContext::device_count()
        .ok()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
}

/// On GPU `ordinal`, world size 1: creates an id, inits a communicator, then all-reduces a random f32 buffer and a
/// random bf16 buffer of [`SELFCHECK_ELEMENTS`] elements (timed), all-gathers and broadcasts the f32 one, runs a
/// barrier, and checks every result equals the input. `timeout` bounds init and each collective.
///
/// Errors (never panics) when libcuda / libnccl are missing ([`NcclError::NoLibrary`]), the device does not exist
/// ([`NcclError::NoDevice`]), or an NCCL / CUDA call fails; a wrong result is `Ok` with `ok == false`.
pub fn selfcheck_world_size_one(ordinal: usize, timeout: Duration) -> Result<SelfCheck, NcclError> {
    ffi::ensure_driver()?;
    ffi::ensure_nccl()?;
    let stream = open_stream(ordinal)?;
    let nccl_version = ffi::version()?;
    let mut comm = NcclComm::init(NcclConfig {
        id: NcclId::new()?,
        rank: 0,
        world_size: 1,
        timeout,
        stream: Arc::clone(&stream),
    })?;
    let mut failures = Vec::new();
    let host = random_f32(SELFCHECK_ELEMENTS, 0x5eed_0001);
    let micros = check_f32(&mut comm, &stream, &host, &mut failures)?;
    drop(host);
    let host16: Vec<half::bf16> = random_f32(SELFCHECK_ELEMENTS, 0x5eed_0002)
        .into_iter()
        .map(half::bf16::from_f32)
        .collect();
    let mut dev16 = upload(&stream, &host16)?;
    let t = Instant::now();
    comm.all_reduce_sum_bf16(&mut dev16)?;
    let bf16_micros = micros_since(t);
    compare(
        "all_reduce_sum_bf16",
        &host16,
        &download(&stream, &dev16)?,
        &mut failures,
    );
    comm.barrier()?;
    if !comm.is_healthy() {
        failures.push("communicator unhealthy after the checks".into());
    }
    drop(comm);
    Ok(SelfCheck {
        ok: failures.is_empty(),
        elements: SELFCHECK_ELEMENTS,
        micros,
        bf16_micros,
        nccl_version,
        failures,
    })
}

/// All-reduce (warm-up + timed), all-gather into a zeroed buffer, broadcast; returns the timed all-reduce in µs.
fn check_f32(
    comm: &mut NcclComm,
    stream: &Arc<CudaStream>,
    host: &[f32],
    failures: &mut Vec<String>,
) -> Result<u64, NcclError> {
    let mut dev = upload(stream, host)?;
    comm.all_reduce_sum_f32(&mut dev)?;
    let t = Instant::now();
    comm.all_reduce_sum_f32(&mut dev)?;
    let micros = micros_since(t);
    compare(
        "all_reduce_sum_f32",
        host,
        &download(stream, &dev)?,
        failures,
    );

    let mut gathered = stream
        .alloc_zeros::<f32>(host.len())
        .map_err(|e| NcclError::cuda("alloc", e))?;
    comm.all_gather_f32(&dev, &mut gathered)?;
    compare(
        "all_gather_f32",
        host,
        &download(stream, &gathered)?,
        failures,
    );

    comm.broadcast_f32(&mut dev, 0)?;
    compare("broadcast_f32", host, &download(stream, &dev)?, failures);
    Ok(micros)
}

/// Context and a fresh (non-default) stream on `ordinal`, with typed errors instead of cudarc's panics.
fn open_stream(ordinal: usize) -> Result<Arc<CudaStream>, NcclError> {
    let count = CudaContext::device_count().map_err(|e| NcclError::NoDevice(e.to_string()))?;
    if ordinal >= usize::try_from(count).unwrap_or(0) {
        return Err(NcclError::NoDevice(format!(
            "device {ordinal} requested, the driver reports {count}"
        )));
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| NcclError::NoDevice(e.to_string()))?;
    ctx.new_stream()
        .map_err(|e| NcclError::cuda("new_stream", e))
}

fn upload<T: DeviceRepr>(stream: &Arc<CudaStream>, host: &[T]) -> Result<CudaSlice<T>, NcclError> {
    stream
        .clone_htod(host)
        .map_err(|e| NcclError::cuda("copy_htod", e))
}

/// Device to host, then a stream sync (the collective before it already completed, so this cannot wedge on a peer).
fn download<T: DeviceRepr>(
    stream: &Arc<CudaStream>,
    dev: &CudaSlice<T>,
) -> Result<Vec<T>, NcclError> {
    let out = stream
        .clone_dtoh(dev)
        .map_err(|e| NcclError::cuda("copy_dtoh", e))?;
    stream
        .synchronize()
        .map_err(|e| NcclError::cuda("synchronize", e))?;
    Ok(out)
}

/// Bitwise comparison; records the first mismatch.
fn compare<T: bytemuck::Pod>(op: &str, want: &[T], got: &[T], failures: &mut Vec<String>) {
    if want.len() != got.len() {
        failures.push(format!(
            "{op}: {} elements back, expected {}",
            got.len(),
            want.len()
        ));
        return;
    }
    let size = std::mem::size_of::<T>();
    let (w, g): (&[u8], &[u8]) = (bytemuck::cast_slice(want), bytemuck::cast_slice(got));
    if let Some(i) = w
        .chunks_exact(size)
        .zip(g.chunks_exact(size))
        .position(|(a, b)| a != b)
    {
        failures.push(format!("{op}: element {i} differs from the input"));
    }
}

fn random_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn micros_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_finds_first_mismatch() {
        let mut f = Vec::new();
        compare("op", &[1.0f32, 2.0, 3.0], &[1.0, 2.0, 3.0], &mut f);
        assert!(f.is_empty());
        compare("op", &[1.0f32, 2.0, 3.0], &[1.0, 2.5, 4.0], &mut f);
        assert_eq!(f, vec!["op: element 1 differs from the input".to_string()]);
        compare("op", &[1.0f32], &[], &mut f);
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn random_is_deterministic_and_in_range() {
        let a = random_f32(1000, 7);
        assert_eq!(a, random_f32(1000, 7));
        assert!(a.iter().all(|x| (-1.0..1.0).contains(x)));
    }
}
