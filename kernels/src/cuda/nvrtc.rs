//! Run-time compilation with NVRTC and the on-disk cache of compiled images.
//!
//! A program is compiled for the device's own architecture, first to a CUBIN
//! (`--gpu-architecture=sm_XY`), which the driver loads without a JIT step and which also
//! works when NVRTC is a newer CUDA minor release than the driver; if NVRTC cannot
//! produce it or the driver refuses it, to PTX (`--gpu-architecture=compute_XY`). Default
//! NVRTC floating-point settings are kept (no fast math; IEEE division and square root;
//! FMA contraction on), and no optimization flag is passed: NVRTC optimizes by default.
//!
//! The cache (a directory the caller names; nothing is read from the environment) keys
//! each image by a 64-bit FNV-1a hash of (image kind, program name, source, compile
//! options, compute capability, NVRTC version); each file starts with a header repeating
//! the key and the image length, checked on read. Cache I/O errors are never fatal: an
//! unreadable or mismatched file is a miss, a failed write is only counted.

use std::ffi::{c_char, CString};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::nvrtc::{result as nvrtc_result, sys as nvrtc_sys};

use super::error::CudaError;

/// What a compiled image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ImageKind {
    Cubin,
    Ptx,
}

impl ImageKind {
    fn tag(self) -> &'static str {
        match self {
            ImageKind::Cubin => "cubin",
            ImageKind::Ptx => "ptx",
        }
    }

    /// The NVRTC options for compute capability `cc`.
    pub(crate) fn options(self, cc: (i32, i32)) -> Vec<String> {
        let arch = match self {
            ImageKind::Cubin => format!("--gpu-architecture=sm_{}{}", cc.0, cc.1),
            ImageKind::Ptx => format!("--gpu-architecture=compute_{}{}", cc.0, cc.1),
        };
        vec![arch]
    }
}

/// The NVRTC library version `(major, minor)`.
pub(crate) fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: both out-pointers point to live, writable i32s for the whole call.
    let r = unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
    r.result()
        .map_err(|e| CudaError::Driver(format!("nvrtcVersion: {e}")))?;
    Ok((major, minor))
}

/// Destroys an NVRTC program when dropped.
struct Program(nvrtc_sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: `self.0` was created by nvrtcCreateProgram and is destroyed only here.
        // A failure to destroy only leaks host memory, so the result is ignored.
        let _ = unsafe { nvrtc_result::destroy_program(self.0) };
    }
}

/// Compiles `src` (the program called `name`) into an image of `kind`.
pub(crate) fn compile(
    name: &str,
    src: &str,
    kind: ImageKind,
    cc: (i32, i32),
) -> Result<Vec<u8>, CudaError> {
    let c_src = CString::new(src).map_err(|_| CudaError::Nvrtc {
        kernel: name.to_string(),
        log: "source contains a NUL byte".into(),
    })?;
    let c_name = CString::new(format!("{name}.cu")).map_err(|_| CudaError::Nvrtc {
        kernel: name.to_string(),
        log: "program name contains a NUL byte".into(),
    })?;
    let prog = nvrtc_result::create_program(&c_src, Some(&c_name))
        .map(Program)
        .map_err(|e| CudaError::Driver(format!("nvrtcCreateProgram({name}): {e}")))?;
    let options = kind.options(cc);
    // SAFETY: `prog.0` is a live program; the options contain no NUL bytes (built above
    // from digits and ASCII), which compile_program turns into C strings.
    let compiled = unsafe { nvrtc_result::compile_program(prog.0, &options) };
    if let Err(e) = compiled {
        return Err(CudaError::Nvrtc {
            kernel: name.to_string(),
            log: format!("{e} with options {options:?}: {}", program_log(&prog)),
        });
    }
    read_image(&prog, kind).map_err(|e| CudaError::Nvrtc {
        kernel: name.to_string(),
        log: format!("reading the {} image: {e}", kind.tag()),
    })
}

/// The compile log of `prog` (empty if it cannot be read).
fn program_log(prog: &Program) -> String {
    // SAFETY: `prog.0` is a live program.
    match unsafe { nvrtc_result::get_program_log(prog.0) } {
        Ok(raw) => c_chars_to_string(&raw),
        Err(e) => format!("(log unavailable: {e})"),
    }
}

fn c_chars_to_string(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw.iter().map(|&c| c as u8).collect();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The compiled image of `prog`: CUBIN bytes, or PTX text without its trailing NUL.
fn read_image(prog: &Program, kind: ImageKind) -> Result<Vec<u8>, String> {
    let mut size = 0usize;
    // SAFETY: `prog.0` is a live, successfully compiled program and `size` is writable.
    let r = unsafe {
        match kind {
            ImageKind::Cubin => nvrtc_sys::nvrtcGetCUBINSize(prog.0, &mut size),
            ImageKind::Ptx => nvrtc_sys::nvrtcGetPTXSize(prog.0, &mut size),
        }
    };
    r.result().map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` holds exactly the `size` bytes NVRTC just reported for this image.
    let r = unsafe {
        match kind {
            ImageKind::Cubin => nvrtc_sys::nvrtcGetCUBIN(prog.0, buf.as_mut_ptr().cast()),
            ImageKind::Ptx => nvrtc_sys::nvrtcGetPTX(prog.0, buf.as_mut_ptr().cast()),
        }
    };
    r.result().map_err(|e| e.to_string())?;
    if kind == ImageKind::Ptx {
        while buf.last() == Some(&0) {
            buf.pop();
        }
        if buf.contains(&0) {
            return Err("PTX contains a NUL byte".into());
        }
    }
    if buf.is_empty() {
        return Err("empty image".into());
    }
    Ok(buf)
}

/// Checks that `ptx` is valid text for a C string (used before handing PTX to the driver).
pub(crate) fn ptx_text(image: &[u8]) -> Result<String, CudaError> {
    let s = std::str::from_utf8(image)
        .map_err(|e| CudaError::Driver(format!("PTX is not UTF-8: {e}")))?;
    if s.contains('\0') {
        return Err(CudaError::Driver("PTX contains a NUL byte".into()));
    }
    Ok(s.to_string())
}

/// FNV-1a, 64 bits: stable across Rust releases (unlike `DefaultHasher`).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for &b in part.iter().chain(&[0xffu8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Where one compiled image lives in the cache, and the key its header must repeat.
pub(crate) struct CacheEntry {
    path: PathBuf,
    header: String,
}

impl CacheEntry {
    pub(crate) fn new(
        dir: &Path,
        name: &str,
        src: &str,
        kind: ImageKind,
        cc: (i32, i32),
        nvrtc: (i32, i32),
    ) -> CacheEntry {
        let opts = kind.options(cc).join(" ");
        let ver = format!("{}.{}", nvrtc.0, nvrtc.1);
        let ccs = format!("{}{}", cc.0, cc.1);
        let parts: [&[u8]; 6] = [
            kind.tag().as_bytes(),
            name.as_bytes(),
            src.as_bytes(),
            opts.as_bytes(),
            ccs.as_bytes(),
            ver.as_bytes(),
        ];
        let hash = fnv1a(&parts);
        let file = format!("weft-{name}-sm{ccs}-nvrtc{ver}-{hash:016x}.{}", kind.tag());
        CacheEntry {
            path: dir.join(file),
            header: format!("weft-cuda-cache v1 {} {name} {hash:016x}", kind.tag()),
        }
    }

    /// The cached image, if the file exists and its header and length match.
    pub(crate) fn read(&self) -> Option<Vec<u8>> {
        let data = fs::read(&self.path).ok()?;
        let nl = data.iter().position(|&b| b == b'\n')?;
        let header = std::str::from_utf8(&data[..nl]).ok()?;
        let (key, len) = header.rsplit_once(' ')?;
        let len: usize = len.parse().ok()?;
        let body = &data[nl + 1..];
        (key == self.header && body.len() == len && len > 0).then(|| body.to_vec())
    }

    /// Writes the image atomically (temporary file, then rename).
    pub(crate) fn write(&self, image: &[u8]) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        // Unique per process and per write, so concurrent writers never share a file.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .path
            .with_extension(format!("tmp{}-{n}", std::process::id()));
        {
            let mut f = fs::File::create(&tmp)?;
            writeln!(f, "{} {}", self.header, image.len())?;
            f.write_all(image)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::{CacheEntry, ImageKind};

    fn scratch(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("weft-nvrtc-{tag}-{}", std::process::id()))
    }

    #[test]
    fn options_name_the_device_architecture() {
        assert_eq!(
            ImageKind::Cubin.options((9, 0)),
            ["--gpu-architecture=sm_90"]
        );
        assert_eq!(
            ImageKind::Ptx.options((8, 6)),
            ["--gpu-architecture=compute_86"]
        );
    }

    #[test]
    fn the_cache_round_trips_and_rejects_other_keys() {
        let dir = scratch("cache");
        let entry =
            |src: &str, cc, ver| CacheEntry::new(&dir, "prog", src, ImageKind::Cubin, cc, ver);
        let e = entry("src", (9, 0), (13, 0));
        assert_eq!(e.read(), None);
        e.write(b"\x7fELF image\nwith newline").expect("write");
        assert_eq!(
            e.read().as_deref(),
            Some(&b"\x7fELF image\nwith newline"[..])
        );
        for other in [
            entry("src2", (9, 0), (13, 0)),
            entry("src", (8, 0), (13, 0)),
            entry("src", (9, 0), (12, 9)),
        ] {
            assert_ne!(other.path(), e.path());
            assert_eq!(other.read(), None);
        }
        let ptx = CacheEntry::new(&dir, "prog", "src", ImageKind::Ptx, (9, 0), (13, 0));
        assert_ne!(ptx.path(), e.path());
        // A truncated file is a miss, not an error.
        let data = std::fs::read(e.path()).expect("read");
        std::fs::write(e.path(), &data[..data.len() - 3]).expect("truncate");
        assert_eq!(e.read(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
