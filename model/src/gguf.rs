//! GGUF (v2 and v3, little-endian) reader over a read-only memory map.
//!
//! Every count, length and offset in the header is checked against the file
//! size before anything is allocated or sliced, so a corrupt or truncated file
//! is an error, never a panic or a huge allocation.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use weft_kernels::DType;

pub use crate::checkpoint::LoadError;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Cap on metadata array lengths (real vocabularies are ~10^5 entries).
const MAX_ARRAY_LEN: u64 = 1 << 24;
const MAX_NESTING: u32 = 4;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as an i128 when it is an integer of any width.
    fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }
}

/// One tensor's directory entry, of a type this crate supports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    pub dtype: DType,
    /// ggml order: `dims[0]` is the innermost (columns).
    pub dims: Vec<u64>,
    /// Absolute file offset of the first byte.
    pub offset: u64,
    pub byte_len: u64,
}

/// Maps a ggml type id to a supported dtype.
pub fn dtype_from_ggml(type_id: u32) -> Option<DType> {
    Some(match type_id {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::Q4_0,
        3 => DType::Q4_1,
        8 => DType::Q8_0,
        30 => DType::BF16,
        _ => return None,
    })
}

/// A memory-mapped GGUF file with its parsed header.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    index: HashMap<String, usize>,
    /// Tensors of ggml types this crate cannot read: name -> type id.
    unsupported: BTreeMap<String, u32>,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("unsupported", &self.unsupported)
            .finish_non_exhaustive()
    }
}

/// Bounds-checked little-endian cursor over the header.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, msg: String) -> LoadError {
        LoadError::Corrupt {
            path: self.path.to_path_buf(),
            msg,
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], LoadError> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                self.corrupt(format!(
                    "{what}: needs {n} bytes at offset {} but the file has {} bytes",
                    self.pos,
                    self.buf.len()
                ))
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N], LoadError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, LoadError> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, LoadError> {
        let at = self.pos;
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.corrupt(format!("{what}: string at offset {at} is not UTF-8")))
    }

    /// A count of items of at least `min_size` bytes each, checked to fit.
    fn count(&mut self, min_size: u64, cap: u64, what: &str) -> Result<u64, LoadError> {
        let at = self.pos;
        let n = self.u64(what)?;
        let fits = n
            .checked_mul(min_size)
            .is_some_and(|b| b <= self.remaining() as u64);
        if !fits || n > cap {
            return Err(self.corrupt(format!(
                "{what}: count {n} at offset {at} cannot fit in the {} remaining bytes",
                self.remaining()
            )));
        }
        Ok(n)
    }

    fn value(&mut self, type_id: u32, depth: u32, what: &str) -> Result<GgufValue, LoadError> {
        use GgufValue as V;
        Ok(match type_id {
            0 => V::U8(self.arr::<1>(what)?[0]),
            1 => V::I8(i8::from_le_bytes(self.arr(what)?)),
            2 => V::U16(u16::from_le_bytes(self.arr(what)?)),
            3 => V::I16(i16::from_le_bytes(self.arr(what)?)),
            4 => V::U32(self.u32(what)?),
            5 => V::I32(i32::from_le_bytes(self.arr(what)?)),
            6 => V::F32(f32::from_le_bytes(self.arr(what)?)),
            7 => match self.arr::<1>(what)?[0] {
                0 => V::Bool(false),
                1 => V::Bool(true),
                b => {
                    return Err(
                        self.corrupt(format!("{what}: bool byte {b} at offset {}", self.pos - 1))
                    )
                }
            },
            8 => V::String(self.string(what)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(
                        self.corrupt(format!("{what}: arrays nested deeper than {MAX_NESTING}"))
                    );
                }
                let elem = self.u32(what)?;
                let min = value_min_size(elem).ok_or_else(|| {
                    self.corrupt(format!(
                        "{what}: unknown array element type {elem} at offset {}",
                        self.pos - 4
                    ))
                })?;
                let n = self.count(min, MAX_ARRAY_LEN, what)?;
                // Grow as elements are actually read: each consumes at least one byte.
                let mut items = Vec::with_capacity((n as usize).min(4096));
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1, what)?);
                }
                V::Array(items)
            }
            10 => V::U64(self.u64(what)?),
            11 => V::I64(i64::from_le_bytes(self.arr(what)?)),
            12 => V::F64(f64::from_le_bytes(self.arr(what)?)),
            t => {
                return Err(self.corrupt(format!(
                    "{what}: unknown value type {t} at offset {}",
                    self.pos - 4
                )))
            }
        })
    }
}

/// Smallest encoded size of a value of GGUF value type `t`.
fn value_min_size(t: u32) -> Option<u64> {
    Some(match t {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

/// Raw tensor directory entry before validation.
struct RawTensor {
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    rel_offset: u64,
}

fn read_tensor_info(r: &mut Reader<'_>) -> Result<RawTensor, LoadError> {
    let name = r.string("tensor name")?;
    let what = format!("tensor {name}");
    let n_dims = r.u32(&what)?;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(r.corrupt(format!(
            "{what}: {n_dims} dimensions (expected 1..={MAX_DIMS})"
        )));
    }
    let dims = (0..n_dims)
        .map(|_| r.u64(&what))
        .collect::<Result<Vec<_>, _>>()?;
    let type_id = r.u32(&what)?;
    let rel_offset = r.u64(&what)?;
    Ok(RawTensor {
        name,
        dims,
        type_id,
        rel_offset,
    })
}

/// Byte length of a tensor of `dims` (ggml order) and `dtype`.
fn tensor_byte_len(dims: &[u64], dtype: DType) -> Option<u64> {
    let cols = *dims.first()?;
    let rows = dims[1..].iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
    let be = dtype.block_elems() as u64;
    if !cols.is_multiple_of(be) {
        return None;
    }
    (cols / be)
        .checked_mul(dtype.block_bytes() as u64)?
        .checked_mul(rows)
}

impl GgufFile {
    /// Maps `path` and parses its header and tensor directory.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let io = |source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 24 {
            return Err(LoadError::Corrupt {
                path: path.to_path_buf(),
                msg: format!("{len} bytes is too small for a GGUF header"),
            });
        }
        // SAFETY: the map is read-only and private to this struct; like every
        // mmap-based model loader we rely on the file not being truncated or
        // rewritten by another process while it is mapped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path.to_path_buf(), mmap)
    }

    fn parse(path: PathBuf, mmap: Mmap) -> Result<Self, LoadError> {
        let mut r = Reader {
            buf: &mmap,
            pos: 0,
            path: &path,
        };
        if r.take(4, "magic")? != MAGIC {
            return Err(r.corrupt("bad magic (not a GGUF file)".into()));
        }
        let version = r.u32("version")?;
        if version != 2 && version != 3 {
            return Err(r.corrupt(format!(
                "unsupported GGUF version {version} (expected 2 or 3, little-endian)"
            )));
        }
        // Minimal encoded sizes: tensor info 8+4+8+4+8, key-value 8+4+1.
        let n_tensors = r.count(32, u64::MAX, "tensor count")?;
        let n_kv = r.count(13, u64::MAX, "metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let what = format!("metadata {key}");
            let type_id = r.u32(&what)?;
            let value = r.value(type_id, 0, &what)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(r.corrupt(format!("duplicate metadata key {key}")));
            }
        }
        let raw = (0..n_tensors)
            .map(|_| read_tensor_info(&mut r))
            .collect::<Result<Vec<_>, _>>()?;
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v
                .as_int()
                .and_then(|a| u64::try_from(a).ok())
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| {
                    r.corrupt(format!("general.alignment {v:?} is not a power of two"))
                })?,
        };
        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        let mut file = Self {
            version,
            metadata,
            tensors: Vec::new(),
            index: HashMap::new(),
            unsupported: BTreeMap::new(),
            data_offset,
            mmap,
            path,
        };
        for t in raw {
            file.add_tensor(t, alignment)?;
        }
        Ok(file)
    }

    fn add_tensor(&mut self, t: RawTensor, alignment: u64) -> Result<(), LoadError> {
        let corrupt = |msg: String| LoadError::Corrupt {
            path: self.path.clone(),
            msg,
        };
        if self.index.contains_key(&t.name) || self.unsupported.contains_key(&t.name) {
            return Err(corrupt(format!("duplicate tensor {}", t.name)));
        }
        if !t.rel_offset.is_multiple_of(alignment) {
            return Err(corrupt(format!(
                "tensor {}: offset {} is not {alignment}-aligned",
                t.name, t.rel_offset
            )));
        }
        let Some(dtype) = dtype_from_ggml(t.type_id) else {
            self.unsupported.insert(t.name, t.type_id);
            return Ok(());
        };
        let byte_len = tensor_byte_len(&t.dims, dtype).ok_or_else(|| {
            corrupt(format!(
                "tensor {}: invalid dims {:?} for {dtype:?}",
                t.name, t.dims
            ))
        })?;
        let offset = self.data_offset.checked_add(t.rel_offset);
        let end = offset.and_then(|o| o.checked_add(byte_len));
        let (Some(offset), Some(end)) = (offset, end) else {
            return Err(corrupt(format!("tensor {}: offset overflows", t.name)));
        };
        if end > self.mmap.len() as u64 {
            return Err(corrupt(format!(
                "tensor {}: data [{offset}, {end}) runs past the end of the file ({} bytes)",
                t.name,
                self.mmap.len()
            )));
        }
        self.index.insert(t.name.clone(), self.tensors.len());
        self.tensors.push(GgufTensorInfo {
            name: t.name,
            dtype,
            dims: t.dims,
            offset,
            byte_len,
        });
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Absolute file offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// An integer value of any width that fits in u32.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get(key)?.as_int().and_then(|v| u32::try_from(v).ok())
    }

    /// An integer value of any width that fits in u64.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_int().and_then(|v| u64::try_from(v).ok())
    }

    /// A float (f32 or f64) or integer value, as f32.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        match self.get(key)? {
            GgufValue::F32(v) => Some(*v),
            GgufValue::F64(v) => Some(*v as f32),
            v => v.as_int().map(|i| i as f32),
        }
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// An array whose elements are all strings.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        match self.get(key)? {
            GgufValue::Array(items) => items
                .iter()
                .map(|v| match v {
                    GgufValue::String(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// An array whose elements are all integers that fit in i32.
    pub fn get_i32_array(&self, key: &str) -> Option<Vec<i32>> {
        match self.get(key)? {
            GgufValue::Array(items) => items
                .iter()
                .map(|v| v.as_int().and_then(|i| i32::try_from(i).ok()))
                .collect(),
            _ => None,
        }
    }

    /// The tensors of supported types, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// A tensor of a supported type (None if absent or of another type).
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// Whether a tensor of that name exists, whatever its type.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.index.contains_key(name) || self.unsupported.contains_key(name)
    }

    /// Tensors present in the file whose ggml type is unsupported (name, type id).
    pub fn unsupported_tensors(&self) -> impl Iterator<Item = (&str, u32)> {
        self.unsupported.iter().map(|(n, &t)| (n.as_str(), t))
    }

    /// Like [`Self::tensor`], but says why a tensor is unavailable.
    pub fn require_tensor(&self, name: &str) -> Result<&GgufTensorInfo, LoadError> {
        if let Some(t) = self.tensor(name) {
            return Ok(t);
        }
        match self.unsupported.get(name) {
            Some(&type_id) => Err(LoadError::UnsupportedDType {
                tensor: name.to_string(),
                type_id,
            }),
            None => Err(LoadError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            }),
        }
    }

    /// Bounds-checked view of `len` bytes at absolute `offset`.
    pub fn bytes(&self, offset: u64, len: u64) -> Result<&[u8], LoadError> {
        let range = offset
            .checked_add(len)
            .filter(|&end| end <= self.mmap.len() as u64)
            .map(|end| offset as usize..end as usize);
        range
            .map(|r| &self.mmap[r])
            .ok_or_else(|| LoadError::Corrupt {
                path: self.path.clone(),
                msg: format!(
                    "byte range [{offset}, +{len}) is outside the file ({} bytes)",
                    self.mmap.len()
                ),
            })
    }
}
