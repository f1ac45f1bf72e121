//! Hugging Face safetensors checkpoints: one `model.safetensors`, or several
//! files listed by `model.safetensors.index.json` (its `weight_map`), each
//! memory-mapped. Headers are parsed and validated by the `safetensors` crate
//! (offsets contiguous, sizes consistent, file length exact).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::checkpoint::LoadError;
use weft_kernels::DType;

/// One tensor's directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StTensorInfo {
    pub name: String,
    pub dtype: DType,
    /// Row-major shape as stored ([out, in] for linear weights).
    pub shape: Vec<usize>,
    /// Index into [`SafetensorsCheckpoint::files`].
    pub file: usize,
    /// Absolute byte offset within that file.
    pub offset: usize,
    pub byte_len: usize,
}

struct StFile {
    path: PathBuf,
    mmap: Mmap,
}

/// A set of memory-mapped safetensors files and the union of their tensors.
pub struct SafetensorsCheckpoint {
    files: Vec<StFile>,
    tensors: HashMap<String, StTensorInfo>,
    /// Present tensors of dtypes this crate cannot read: name -> (file, dtype).
    unsupported: HashMap<String, (usize, String)>,
}

impl std::fmt::Debug for SafetensorsCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsCheckpoint")
            .field("files", &self.files())
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

fn map_dtype(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

fn map_file(path: &Path) -> Result<Mmap, LoadError> {
    let file = File::open(path).map_err(LoadError::io(path))?;
    // SAFETY: read-only private map; we rely on the checkpoint not being
    // truncated or rewritten by another process while mapped.
    unsafe { Mmap::map(&file) }.map_err(LoadError::io(path))
}

impl SafetensorsCheckpoint {
    /// Opens a single `.safetensors` file.
    pub fn open_single(path: &Path) -> Result<Self, LoadError> {
        let mut ckpt = Self {
            files: Vec::new(),
            tensors: HashMap::new(),
            unsupported: HashMap::new(),
        };
        ckpt.add_file(path, None)?;
        Ok(ckpt)
    }

    /// Opens the files named by a `model.safetensors.index.json`.
    pub fn open_index(index_path: &Path) -> Result<Self, LoadError> {
        let corrupt = |msg: String| LoadError::Corrupt {
            path: index_path.to_path_buf(),
            msg,
        };
        let text = std::fs::read_to_string(index_path).map_err(LoadError::io(index_path))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| corrupt(format!("invalid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| corrupt("no `weight_map` object".into()))?;
        // file name -> tensor names it should hold
        let mut by_file: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (tensor, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| corrupt(format!("weight_map[{tensor}] is not a file name")))?;
            let plain = !file.is_empty()
                && Path::new(file).file_name().and_then(|n| n.to_str()) == Some(file)
                && file != ".."
                && file != ".";
            if !plain {
                return Err(corrupt(format!(
                    "weight_map[{tensor}] = {file:?} is not a plain file name"
                )));
            }
            by_file.entry(file).or_default().push(tensor);
        }
        if by_file.is_empty() {
            return Err(corrupt("`weight_map` is empty".into()));
        }
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut ckpt = Self {
            files: Vec::new(),
            tensors: HashMap::new(),
            unsupported: HashMap::new(),
        };
        for (file, names) in by_file {
            ckpt.add_file(&dir.join(file), Some(&names))?;
        }
        Ok(ckpt)
    }

    /// Maps one file and records its tensors (all of them, or only `only`,
    /// each of which must be present).
    fn add_file(&mut self, path: &Path, only: Option<&[&str]>) -> Result<(), LoadError> {
        let mmap = map_file(path)?;
        let corrupt = |msg: String| LoadError::Corrupt {
            path: path.to_path_buf(),
            msg,
        };
        let (header_len, meta) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| corrupt(format!("{e} (file is {} bytes)", mmap.len())))?;
        let data_start = 8 + header_len;
        let idx = self.files.len();
        let infos = meta.tensors();
        let wanted: Vec<&str> = match only {
            Some(names) => names.to_vec(),
            None => infos.keys().map(String::as_str).collect(),
        };
        for name in wanted {
            let info = infos.get(name).ok_or_else(|| {
                corrupt(format!(
                    "tensor {name} listed in the index is not in this file"
                ))
            })?;
            let Some(dtype) = map_dtype(info.dtype) else {
                self.unsupported
                    .insert(name.to_string(), (idx, format!("{:?}", info.dtype)));
                continue;
            };
            let (s, e) = info.data_offsets;
            // read_metadata checked the offsets against the file length; check again
            // so that a slice can never go out of bounds.
            let offset = data_start.checked_add(s).filter(|_| e >= s);
            let end = data_start.checked_add(e).filter(|&end| end <= mmap.len());
            let (Some(offset), Some(_)) = (offset, end) else {
                return Err(corrupt(format!(
                    "tensor {name}: data offsets {s}..{e} outside the file"
                )));
            };
            let t = StTensorInfo {
                name: name.to_string(),
                dtype,
                shape: info.shape.clone(),
                file: idx,
                offset,
                byte_len: e - s,
            };
            if self.tensors.insert(name.to_string(), t).is_some() {
                return Err(corrupt(format!(
                    "tensor {name} appears in more than one file"
                )));
            }
        }
        self.files.push(StFile {
            path: path.to_path_buf(),
            mmap,
        });
        Ok(())
    }

    /// Paths of the mapped files, in index order.
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// Directory entry of a tensor of a supported dtype.
    pub fn info(&self, name: &str) -> Option<&StTensorInfo> {
        self.tensors.get(name)
    }

    /// All supported tensors, sorted by name.
    pub fn infos(&self) -> Vec<&StTensorInfo> {
        let mut v: Vec<_> = self.tensors.values().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// A tensor's directory entry and its bytes.
    pub fn tensor(&self, name: &str) -> Result<(&StTensorInfo, &[u8]), LoadError> {
        let Some(info) = self.tensors.get(name) else {
            let first = self
                .files
                .first()
                .map_or_else(PathBuf::new, |f| f.path.clone());
            return Err(match self.unsupported.get(name) {
                Some((file, dtype)) => LoadError::UnsupportedSafetensorsDType {
                    path: self.files[*file].path.clone(),
                    tensor: name.to_string(),
                    dtype: dtype.clone(),
                },
                None => LoadError::MissingTensor {
                    path: first,
                    tensor: name.to_string(),
                },
            });
        };
        let file = &self.files[info.file];
        let bytes = info
            .offset
            .checked_add(info.byte_len)
            .and_then(|end| file.mmap.get(info.offset..end))
            .ok_or_else(|| LoadError::Corrupt {
                path: file.path.clone(),
                msg: format!("tensor {name}: data outside the file"),
            })?;
        Ok((info, bytes))
    }
}
