//! The CUDA backend of one device: context, stream, cuBLAS handle and the kernel cache.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::{CUdevice_attribute, CUresult};
use cudarc::driver::{result as drv, CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use super::error::{guarded, CudaError};
use super::nvrtc::{compile, nvrtc_version, ptx_text, CacheEntry, ImageKind};
use super::source::{program_of, Program, PROGRAMS};

/// How to open a [`CudaBackend`]. Library code never reads environment variables: the
/// caller passes everything here.
#[derive(Clone, Debug, Default)]
pub struct CudaConfig {
    /// The device ordinal (as the driver numbers devices).
    pub ordinal: usize,
    /// Where compiled kernel images are cached across runs (created if missing); `None`
    /// compiles every program once per backend.
    pub ptx_cache_dir: Option<PathBuf>,
}

/// What the driver reports about a device.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// `(major, minor)`, e.g. `(9, 0)` for an H100/H200.
    pub compute_capability: (i32, i32),
    /// Bytes of device memory.
    pub total_mem: usize,
    pub multiprocessors: i32,
    /// The CUDA version the driver supports, e.g. `(13, 0)`.
    pub driver_version: (i32, i32),
}

/// How the kernel programs of a backend were obtained so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Programs compiled with NVRTC.
    pub compiled: usize,
    /// Programs loaded from the on-disk cache.
    pub disk_hits: usize,
    /// Failed writes to the on-disk cache (not fatal).
    pub disk_write_errors: usize,
    /// Programs that needed the PTX fallback (CUBIN failed to compile or load).
    pub ptx_fallbacks: usize,
}

struct KernelCache {
    functions: HashMap<&'static str, CudaFunction>,
    stats: CacheStats,
}

/// One CUDA device: its primary context, a dedicated non-blocking stream every operation
/// of this module runs on, a cuBLAS handle bound to that stream, and the kernels compiled
/// for the device (once per program, on first use, or from the on-disk cache).
///
/// `Send + Sync` without any `unsafe impl` here: its fields are (cudarc declares its
/// handles thread-safe), and the cuBLAS handle and the kernel cache sit behind mutexes.
pub struct CudaBackend {
    // Fields drop in order: the modules (in `cache`) and the cuBLAS handle go before the
    // stream and the context they need.
    info: DeviceInfo,
    nvrtc: (i32, i32),
    cache_dir: Option<PathBuf>,
    cache: Mutex<KernelCache>,
    blas: Mutex<CudaBlas>,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    /// The step profile being recorded, if any (see `profile.rs`).
    pub(crate) profile: Mutex<Option<crate::cuda::profile::Profile>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("info", &self.info)
            .field("nvrtc", &self.nvrtc)
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

/// Whether the CUDA driver library can be loaded (never panics).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library under its usual names (and closes
    // it again); loading it runs the driver's own initializers, nothing of ours.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

fn require_driver() -> Result<(), CudaError> {
    if driver_present() {
        Ok(())
    } else {
        Err(CudaError::NoDriver(
            "libcuda.so cannot be loaded (is the NVIDIA driver installed and on the library \
             path?)"
                .into(),
        ))
    }
}

fn require_libs() -> Result<(), CudaError> {
    // SAFETY: as in `driver_present`, each call only dlopens and closes a library.
    let (nvrtc, cublas) = unsafe {
        (
            cudarc::nvrtc::sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
        )
    };
    let missing = |lib| {
        CudaError::MissingLibrary {
        lib,
        msg: format!("lib{lib}.so cannot be loaded; add the CUDA toolkit's or the pip nvidia-* wheel's lib folder to the library path"),
    }
    };
    if !nvrtc {
        return Err(missing("nvrtc"));
    }
    if !cublas {
        return Err(missing("cublas"));
    }
    Ok(())
}

/// Initializes the driver; the number of devices it sees.
fn init_and_count() -> Result<usize, CudaError> {
    drv::init().map_err(|e| match e.0 {
        CUresult::CUDA_ERROR_NO_DEVICE => CudaError::NoDevice(format!("cuInit: {e}")),
        _ => CudaError::NoDriver(format!("cuInit failed: {e}")),
    })?;
    let n = drv::device::get_count()?;
    Ok(usize::try_from(n).unwrap_or(0))
}

fn require_device(ordinal: usize) -> Result<(), CudaError> {
    let count = init_and_count()?;
    if ordinal >= count {
        return Err(CudaError::NoDevice(format!(
            "ordinal {ordinal} requested, the driver sees {count} device(s)"
        )));
    }
    Ok(())
}

/// The number of CUDA devices (0 without a driver or device; never panics).
pub fn device_count() -> usize {
    guarded("device_count", || {
        require_driver()?;
        init_and_count()
    })
    .unwrap_or(0)
}

fn device_info(ctx: &Arc<CudaContext>) -> Result<DeviceInfo, CudaError> {
    let mut version = 0i32;
    // SAFETY: the out-pointer is a live, writable i32.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }.result()?;
    Ok(DeviceInfo {
        ordinal: ctx.ordinal(),
        name: ctx.name()?,
        compute_capability: ctx.compute_capability()?,
        total_mem: ctx.total_mem()?,
        multiprocessors: ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        driver_version: (version / 1000, (version % 1000) / 10),
    })
}

/// Checks that device `ordinal` can run the backend: driver, device, NVRTC and cuBLAS
/// libraries present, primary context usable. A typed error otherwise, never a panic.
pub fn probe(ordinal: usize) -> Result<DeviceInfo, CudaError> {
    guarded("probe", || {
        require_driver()?;
        require_device(ordinal)?;
        require_libs()?;
        let ctx = CudaContext::new(ordinal)?;
        device_info(&ctx)
    })
}

/// Lets the device's default memory pool keep what stream-ordered frees
/// return (release threshold: unlimited), so the per-step allocations of
/// the forward pass are served from the pool instead of being mapped and
/// unmapped again around every synchronization.
fn keep_pool_memory(ctx: &CudaContext) -> Result<(), CudaError> {
    use cudarc::driver::sys::{cuMemPoolSetAttribute, CUmemPool_attribute};
    let mut threshold = u64::MAX;
    // SAFETY: the device comes from a live context; the attribute takes a
    // pointer to a u64 that lives across the call.
    unsafe {
        let pool = cudarc::driver::result::device::get_default_mem_pool(ctx.cu_device())?;
        cuMemPoolSetAttribute(
            pool,
            CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .result()?;
    }
    Ok(())
}

impl CudaBackend {
    /// Opens device `cfg.ordinal`. Fails with a typed error (never a panic) when the driver,
    /// the device, NVRTC or cuBLAS is missing.
    pub fn new(cfg: CudaConfig) -> Result<CudaBackend, CudaError> {
        guarded("CudaBackend::new", || {
            require_driver()?;
            require_device(cfg.ordinal)?;
            require_libs()?;
            let ctx = CudaContext::new(cfg.ordinal)?;
            let info = device_info(&ctx)?;
            // SAFETY: this `CudaContext` object is this backend's own (CudaContext::new
            // makes a new one per call), and every buffer the backend allocates is used,
            // copied and freed on its single stream, so stream order alone orders every
            // use before the next write and before the stream-ordered free; cudarc's
            // per-buffer events (a record per kernel argument) are pure overhead here.
            // Callers that use the backend's buffers on another stream must synchronize
            // themselves (see `CudaBackend::stream`).
            unsafe { ctx.disable_event_tracking() };
            keep_pool_memory(&ctx)?;
            let stream = ctx.new_stream()?;
            let blas = CudaBlas::new(stream.clone())?;
            let nvrtc = nvrtc_version()?;
            Ok(CudaBackend {
                info,
                nvrtc,
                cache_dir: cfg.ptx_cache_dir,
                cache: Mutex::new(KernelCache {
                    functions: HashMap::new(),
                    stats: CacheStats::default(),
                }),
                blas: Mutex::new(blas),
                stream,
                ctx,
                profile: Mutex::new(None),
            })
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The NVRTC version `(major, minor)` kernels are compiled with.
    pub fn nvrtc_version(&self) -> (i32, i32) {
        self.nvrtc
    }

    /// The stream every operation of this backend is queued on. Buffers carry no
    /// cross-stream events: work queued on another stream that touches them must be
    /// ordered with this one by the caller (e.g. an event recorded here and waited there).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Waits for the stream and reports any error recorded by an earlier asynchronous
    /// operation (a failed launch shows up here at the latest).
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize()?;
        self.ctx.check_err()?;
        Ok(())
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.lock_cache().stats
    }

    /// Compiles (or loads from the cache) every program now, so that a compile error or
    /// the compile time shows up at start-up rather than at first use.
    pub fn preload(&self) -> Result<(), CudaError> {
        for p in PROGRAMS {
            if let Some(&first) = p.functions.first() {
                self.function(first)?;
            }
        }
        Ok(())
    }

    pub(crate) fn lock_blas(&self) -> MutexGuard<'_, CudaBlas> {
        self.blas.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_cache(&self) -> MutexGuard<'_, KernelCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The kernel `name`, compiling its program on first use.
    pub(crate) fn function(&self, name: &'static str) -> Result<CudaFunction, CudaError> {
        let mut cache = self.lock_cache();
        if let Some(f) = cache.functions.get(name) {
            return Ok(f.clone());
        }
        let prog = program_of(name)
            .ok_or_else(|| CudaError::Driver(format!("no program defines kernel `{name}`")))?;
        let functions = guarded(prog.name, || {
            let module = self.load_program(prog, &mut cache.stats)?;
            prog.functions
                .iter()
                .map(|&f| Ok((f, module.load_function(f)?)))
                .collect::<Result<Vec<_>, CudaError>>()
        })?;
        cache.functions.extend(functions);
        cache
            .functions
            .get(name)
            .cloned()
            .ok_or_else(|| CudaError::Driver(format!("kernel `{name}` missing from its module")))
    }

    /// The program's module: from the disk cache, else compiled (CUBIN first, then PTX).
    fn load_program(
        &self,
        prog: &Program,
        stats: &mut CacheStats,
    ) -> Result<Arc<CudaModule>, CudaError> {
        let src = prog.source();
        let cc = self.info.compute_capability;
        let mut errors = Vec::new();
        for kind in [ImageKind::Cubin, ImageKind::Ptx] {
            let entry = self
                .cache_dir
                .as_deref()
                .map(|d| CacheEntry::new(d, prog.name, &src, kind, cc, self.nvrtc));
            if let Some(image) = entry.as_ref().and_then(CacheEntry::read) {
                if let Ok(m) = self.load_image(kind, image) {
                    stats.disk_hits += 1;
                    return Ok(m);
                }
            }
            let image = match compile(prog.name, &src, kind, cc) {
                Ok(image) => image,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            stats.compiled += 1;
            match self.load_image(kind, image.clone()) {
                Ok(m) => {
                    if entry.is_some_and(|e| e.write(&image).is_err()) {
                        stats.disk_write_errors += 1;
                    }
                    if kind == ImageKind::Ptx {
                        stats.ptx_fallbacks += 1;
                    }
                    return Ok(m);
                }
                Err(e) => errors.push(e),
            }
        }
        Err(first_error(prog.name, errors))
    }

    fn load_image(&self, kind: ImageKind, image: Vec<u8>) -> Result<Arc<CudaModule>, CudaError> {
        let ptx = match kind {
            ImageKind::Cubin => Ptx::from_binary(image),
            ImageKind::Ptx => Ptx::from_src(ptx_text(&image)?),
        };
        Ok(self.ctx.load_module(ptx)?)
    }

    /// Where the cached image of `prog` would live (for diagnostics and tests).
    pub fn cache_path(&self, program: &str) -> Option<PathBuf> {
        let dir = self.cache_dir.as_deref()?;
        let prog = PROGRAMS.iter().find(|p| p.name == program)?;
        let entry = CacheEntry::new(
            dir,
            prog.name,
            &prog.source(),
            ImageKind::Cubin,
            self.info.compute_capability,
            self.nvrtc,
        );
        Some(entry.path().to_path_buf())
    }
}

/// The most useful of the errors of both attempts: a compile log if there is one.
fn first_error(program: &str, errors: Vec<CudaError>) -> CudaError {
    let mut others = Vec::new();
    for e in errors {
        if matches!(e, CudaError::Nvrtc { .. }) {
            return e;
        }
        others.push(e.to_string());
    }
    CudaError::Driver(format!("{program}: {}", others.join("; then ")))
}
