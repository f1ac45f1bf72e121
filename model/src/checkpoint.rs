//! A checkpoint on disk (GGUF or Hugging Face safetensors) behind one
//! interface: the config plus canonical tensor names mapped to byte views.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, ModelConfig};
use crate::gguf::GgufFile;
use crate::safetensors_ckpt::SafetensorsCheckpoint;
use weft_kernels::DType;

/// Errors while opening or reading a checkpoint (GGUF, safetensors, shards).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: corrupt or truncated: {msg}", path.display())]
    Corrupt { path: PathBuf, msg: String },
    #[error("tensor {tensor}: unsupported ggml type id {type_id}")]
    UnsupportedDType { tensor: String, type_id: u32 },
    #[error("{}: tensor {tensor}: unsupported dtype {dtype} (supported: F32, F16, BF16)", path.display())]
    UnsupportedSafetensorsDType {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("{}: tensor {tensor} not found", path.display())]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("tensor {tensor}: {msg}")]
    BadTensor { tensor: String, msg: String },
    #[error("{}: bad model config: {source}", path.display())]
    Config { path: PathBuf, source: ConfigError },
    #[error("{}: {msg}", path.display())]
    NotACheckpoint { path: PathBuf, msg: String },
    #[error("shard plan: {msg}")]
    Plan { msg: String },
    #[error("{}: {msg}", path.display())]
    Write { path: PathBuf, msg: String },
}

impl LoadError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// On-disk format of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Gguf,
    Safetensors,
}

/// Canonical, format-independent name of one weight tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TensorName {
    Embed,
    LmHead,
    FinalNorm,
    AttnNorm(usize),
    Q(usize),
    K(usize),
    V(usize),
    O(usize),
    QBias(usize),
    KBias(usize),
    VBias(usize),
    MlpNorm(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
}

type LayerCtor = fn(usize) -> TensorName;

const LAYER_PARTS: [(&str, LayerCtor); 12] = [
    ("attn_norm", TensorName::AttnNorm),
    ("q", TensorName::Q),
    ("k", TensorName::K),
    ("v", TensorName::V),
    ("o", TensorName::O),
    ("q_bias", TensorName::QBias),
    ("k_bias", TensorName::KBias),
    ("v_bias", TensorName::VBias),
    ("mlp_norm", TensorName::MlpNorm),
    ("gate", TensorName::Gate),
    ("up", TensorName::Up),
    ("down", TensorName::Down),
];

impl TensorName {
    /// The layer index of a per-layer tensor.
    pub fn layer(&self) -> Option<usize> {
        use TensorName::*;
        match *self {
            Embed | LmHead | FinalNorm => None,
            AttnNorm(l) | Q(l) | K(l) | V(l) | O(l) | QBias(l) | KBias(l) | VBias(l)
            | MlpNorm(l) | Gate(l) | Up(l) | Down(l) => Some(l),
        }
    }

    /// Short name of the per-layer part ("q", "attn_norm", ...), or the
    /// global name ("embed", "lm_head", "final_norm").
    fn part(&self) -> &'static str {
        match self {
            Self::Embed => "embed",
            Self::LmHead => "lm_head",
            Self::FinalNorm => "final_norm",
            _ => LAYER_PARTS
                .iter()
                .find(|(_, f)| f(0) == self.with_layer(0))
                .map_or("?", |(p, _)| p),
        }
    }

    fn with_layer(&self, l: usize) -> Self {
        use TensorName::*;
        match *self {
            Embed | LmHead | FinalNorm => *self,
            AttnNorm(_) => AttnNorm(l),
            Q(_) => Q(l),
            K(_) => K(l),
            V(_) => V(l),
            O(_) => O(l),
            QBias(_) => QBias(l),
            KBias(_) => KBias(l),
            VBias(_) => VBias(l),
            MlpNorm(_) => MlpNorm(l),
            Gate(_) => Gate(l),
            Up(_) => Up(l),
            Down(_) => Down(l),
        }
    }

    /// e.g. "embed", "layers.3.q", "layers.0.mlp_norm".
    pub fn canonical(&self) -> String {
        match self.layer() {
            None => self.part().to_string(),
            Some(l) => format!("layers.{l}.{}", self.part()),
        }
    }

    /// Inverse of [`Self::canonical`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "embed" => return Some(Self::Embed),
            "lm_head" => return Some(Self::LmHead),
            "final_norm" => return Some(Self::FinalNorm),
            _ => {}
        }
        let (layer, part) = s.strip_prefix("layers.")?.split_once('.')?;
        if layer.is_empty()
            || !layer.bytes().all(|b| b.is_ascii_digit())
            || (layer.len() > 1 && layer.starts_with('0'))
        {
            return None;
        }
        let l: usize = layer.parse().ok()?;
        LAYER_PARTS
            .iter()
            .find(|(p, _)| *p == part)
            .map(|(_, f)| f(l))
    }

    /// Name of the tensor in a GGUF file.
    pub fn gguf_name(&self) -> String {
        use TensorName::*;
        let (l, part) = match *self {
            Embed => return "token_embd.weight".into(),
            LmHead => return "output.weight".into(),
            FinalNorm => return "output_norm.weight".into(),
            AttnNorm(l) => (l, "attn_norm.weight"),
            Q(l) => (l, "attn_q.weight"),
            K(l) => (l, "attn_k.weight"),
            V(l) => (l, "attn_v.weight"),
            O(l) => (l, "attn_output.weight"),
            QBias(l) => (l, "attn_q.bias"),
            KBias(l) => (l, "attn_k.bias"),
            VBias(l) => (l, "attn_v.bias"),
            MlpNorm(l) => (l, "ffn_norm.weight"),
            Gate(l) => (l, "ffn_gate.weight"),
            Up(l) => (l, "ffn_up.weight"),
            Down(l) => (l, "ffn_down.weight"),
        };
        format!("blk.{l}.{part}")
    }

    /// Name of the tensor in a Hugging Face checkpoint.
    pub fn hf_name(&self) -> String {
        use TensorName::*;
        let (l, part) = match *self {
            Embed => return "model.embed_tokens.weight".into(),
            LmHead => return "lm_head.weight".into(),
            FinalNorm => return "model.norm.weight".into(),
            AttnNorm(l) => (l, "input_layernorm.weight"),
            Q(l) => (l, "self_attn.q_proj.weight"),
            K(l) => (l, "self_attn.k_proj.weight"),
            V(l) => (l, "self_attn.v_proj.weight"),
            O(l) => (l, "self_attn.o_proj.weight"),
            QBias(l) => (l, "self_attn.q_proj.bias"),
            KBias(l) => (l, "self_attn.k_proj.bias"),
            VBias(l) => (l, "self_attn.v_proj.bias"),
            MlpNorm(l) => (l, "post_attention_layernorm.weight"),
            Gate(l) => (l, "mlp.gate_proj.weight"),
            Up(l) => (l, "mlp.up_proj.weight"),
            Down(l) => (l, "mlp.down_proj.weight"),
        };
        format!("model.layers.{l}.{part}")
    }

    /// Expected (rows, cols) under `config`; 1-D tensors are (len, 1).
    pub fn expected_shape(&self, c: &ModelConfig) -> (usize, usize) {
        use TensorName::*;
        let q = c.num_heads * c.head_dim;
        let kv = c.num_kv_heads * c.head_dim;
        match self {
            Embed | LmHead => (c.vocab_size, c.hidden_size),
            FinalNorm | AttnNorm(_) | MlpNorm(_) => (c.hidden_size, 1),
            Q(_) => (q, c.hidden_size),
            K(_) | V(_) => (kv, c.hidden_size),
            O(_) => (c.hidden_size, q),
            QBias(_) => (q, 1),
            KBias(_) | VBias(_) => (kv, 1),
            Gate(_) | Up(_) => (c.intermediate_size, c.hidden_size),
            Down(_) => (c.hidden_size, c.intermediate_size),
        }
    }
}

impl fmt::Display for TensorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

/// Checked `dtype.row_bytes(cols)`.
pub(crate) fn row_bytes(dtype: DType, cols: usize, tensor: &str) -> Result<usize, LoadError> {
    dtype.row_bytes(cols).map_err(|e| LoadError::BadTensor {
        tensor: tensor.to_string(),
        msg: e.to_string(),
    })
}

/// A tensor's bytes in the checkpoint, viewed as a row-major matrix.
#[derive(Clone, Copy)]
pub struct TensorRef<'a> {
    pub dtype: DType,
    pub rows: usize,
    /// 1 for 1-D tensors.
    pub cols: usize,
    name: &'a str,
    row_bytes: usize,
    data: &'a [u8],
}

impl fmt::Debug for TensorRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorRef")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl<'a> TensorRef<'a> {
    /// Builds a view, checking `data` holds exactly rows x cols of `dtype`.
    pub(crate) fn new(
        name: &'a str,
        dtype: DType,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self, LoadError> {
        let row_bytes = row_bytes(dtype, cols, name)?;
        if rows.checked_mul(row_bytes) != Some(data.len()) {
            return Err(LoadError::BadTensor {
                tensor: name.to_string(),
                msg: format!("{} bytes do not hold {rows}x{cols} {dtype:?}", data.len()),
            });
        }
        Ok(Self {
            dtype,
            rows,
            cols,
            name,
            row_bytes,
            data,
        })
    }

    /// The tensor's name in the checkpoint file.
    pub fn source_name(&self) -> &'a str {
        self.name
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// All of the tensor's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.data
    }

    fn bad(&self, msg: String) -> LoadError {
        LoadError::BadTensor {
            tensor: self.name.to_string(),
            msg,
        }
    }

    /// The contiguous bytes of whole rows `rows`.
    pub fn row_range_bytes(&self, rows: Range<usize>) -> Result<&'a [u8], LoadError> {
        if rows.start > rows.end || rows.end > self.rows {
            return Err(self.bad(format!("row range {rows:?} outside 0..{}", self.rows)));
        }
        Ok(&self.data[rows.start * self.row_bytes..rows.end * self.row_bytes])
    }

    /// Replaces `out` with the bytes of the sub-matrix `rows` x `cols`, row
    /// major. For quantized types `cols` must start and end on block boundaries.
    pub fn cols_slice(
        &self,
        rows: Range<usize>,
        cols: Range<usize>,
        out: &mut Vec<u8>,
    ) -> Result<(), LoadError> {
        if cols.start > cols.end || cols.end > self.cols {
            return Err(self.bad(format!("column range {cols:?} outside 0..{}", self.cols)));
        }
        let be = self.dtype.block_elems();
        if !cols.start.is_multiple_of(be) || !cols.end.is_multiple_of(be) {
            return Err(self.bad(format!(
                "column range {cols:?} is not on {be}-element {:?} block boundaries",
                self.dtype
            )));
        }
        let whole = self.row_range_bytes(rows.clone())?;
        let start = cols.start / be * self.dtype.block_bytes();
        let len = cols.len() / be * self.dtype.block_bytes();
        out.clear();
        out.reserve(rows.len() * len);
        if self.row_bytes > 0 {
            for row in whole.chunks_exact(self.row_bytes) {
                out.extend_from_slice(&row[start..start + len]);
            }
        }
        Ok(())
    }
}

enum Source {
    Gguf(GgufFile),
    Safetensors(SafetensorsCheckpoint),
}

/// An opened checkpoint: its config and a view of every weight.
pub struct Checkpoint {
    path: PathBuf,
    config: ModelConfig,
    source: Source,
    tokenizer_json: Option<PathBuf>,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("format", &self.format())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn read_hf_config(dir: &Path) -> Result<ModelConfig, LoadError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(LoadError::io(&path))?;
    ModelConfig::from_hf_json(&text).map_err(|source| LoadError::Config { path, source })
}

fn is_gguf(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

impl Checkpoint {
    /// path: a .gguf file; a .safetensors file (config.json beside it); or a
    /// directory holding config.json and model.safetensors or
    /// model.safetensors.index.json.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let meta = std::fs::metadata(path).map_err(LoadError::io(path))?;
        let (dir, source) = if meta.is_dir() {
            let index = path.join("model.safetensors.index.json");
            let single = path.join("model.safetensors");
            let st = if index.is_file() {
                SafetensorsCheckpoint::open_index(&index)?
            } else if single.is_file() {
                SafetensorsCheckpoint::open_single(&single)?
            } else {
                return Err(LoadError::NotACheckpoint {
                    path: path.to_path_buf(),
                    msg: "directory has neither model.safetensors nor model.safetensors.index.json"
                        .into(),
                });
            };
            (path.to_path_buf(), Source::Safetensors(st))
        } else if is_gguf(path) {
            let gguf = GgufFile::open(path)?;
            let config = ModelConfig::from_gguf(&gguf).map_err(|source| LoadError::Config {
                path: path.to_path_buf(),
                source,
            })?;
            return Ok(Self {
                path: path.to_path_buf(),
                config,
                source: Source::Gguf(gguf),
                tokenizer_json: None,
            });
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            (
                dir,
                Source::Safetensors(SafetensorsCheckpoint::open_single(path)?),
            )
        } else {
            return Err(LoadError::NotACheckpoint {
                path: path.to_path_buf(),
                msg: "expected a .gguf file, a .safetensors file or a checkpoint directory".into(),
            });
        };
        let config = read_hf_config(&dir)?;
        let tok = dir.join("tokenizer.json");
        Ok(Self {
            path: path.to_path_buf(),
            config,
            source,
            tokenizer_json: tok.is_file().then_some(tok),
        })
    }

    pub fn format(&self) -> Format {
        match self.source {
            Source::Gguf(_) => Format::Gguf,
            Source::Safetensors(_) => Format::Safetensors,
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF file (its metadata holds the tokenizer).
    pub fn gguf(&self) -> Option<&GgufFile> {
        match &self.source {
            Source::Gguf(g) => Some(g),
            Source::Safetensors(_) => None,
        }
    }

    /// The safetensors side of the checkpoint.
    pub fn safetensors(&self) -> Option<&SafetensorsCheckpoint> {
        match &self.source {
            Source::Safetensors(s) => Some(s),
            Source::Gguf(_) => None,
        }
    }

    /// tokenizer.json beside a safetensors checkpoint, if it exists.
    pub fn tokenizer_json(&self) -> Option<PathBuf> {
        self.tokenizer_json.clone()
    }

    /// Names of every weight tensor the model needs, in a fixed order
    /// (LmHead only when not tied; biases only with attention_bias).
    pub fn tensor_names(&self) -> Vec<TensorName> {
        crate::shard::model_tensor_names(&self.config)
    }

    /// A view of one weight, shape-checked against the config. With tied
    /// embeddings, `LmHead` resolves to the embedding tensor.
    pub fn tensor(&self, name: TensorName) -> Result<TensorRef<'_>, LoadError> {
        let name = if name == TensorName::LmHead && self.config.tie_word_embeddings {
            TensorName::Embed
        } else {
            name
        };
        let (rows, cols) = name.expected_shape(&self.config);
        let t = match &self.source {
            Source::Gguf(g) => {
                let info = g.require_tensor(&name.gguf_name())?;
                let mut d: Vec<usize> = info
                    .dims
                    .iter()
                    .map(|&x| usize::try_from(x).unwrap_or(usize::MAX))
                    .collect();
                while d.len() > 2 && d.last() == Some(&1) {
                    d.pop();
                }
                let (r, c) = match d[..] {
                    [n] => (n, 1),
                    [c, r] => (r, c),
                    _ => (0, 0),
                };
                let data = g.bytes(info.offset, info.byte_len)?;
                self.check_shape(&info.name, &info.dims, (r, c), (rows, cols))?;
                TensorRef::new(&info.name, info.dtype, rows, cols, data)?
            }
            Source::Safetensors(s) => {
                let (info, data) = s.tensor(&name.hf_name())?;
                let shape: Vec<u64> = info.shape.iter().map(|&d| d as u64).collect();
                let (r, c) = match info.shape[..] {
                    [n] => (n, 1),
                    [r, c] => (r, c),
                    _ => (0, 0),
                };
                self.check_shape(&info.name, &shape, (r, c), (rows, cols))?;
                TensorRef::new(&info.name, info.dtype, rows, cols, data)?
            }
        };
        Ok(t)
    }

    fn check_shape(
        &self,
        file_name: &str,
        dims: &[u64],
        got: (usize, usize),
        want: (usize, usize),
    ) -> Result<(), LoadError> {
        if got == want {
            return Ok(());
        }
        Err(LoadError::BadTensor {
            tensor: file_name.to_string(),
            msg: format!(
                "{}: shape {dims:?} is {}x{} (rows x cols), config expects {}x{}",
                self.path.display(),
                got.0,
                got.1,
                want.0,
                want.1
            ),
        })
    }
}
