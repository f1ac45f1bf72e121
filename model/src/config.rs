//! Model hyper-parameters, read from a Hugging Face `config.json` or from the
//! metadata of a GGUF file, plus the rotary-embedding frequency table.

use serde_json::Value;

use weft_kernels::DType;

use crate::gguf::{GgufFile, GgufValue};

/// Errors while reading or validating a model configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config.json is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("config field `{field}` is missing")]
    Missing { field: String },
    #[error("config field `{field}` is invalid: {msg}")]
    Invalid { field: String, msg: String },
    #[error("unsupported architecture {0:?} (supported: llama, qwen2)")]
    UnsupportedArch(String),
    #[error("unsupported rope_scaling type {0:?} (only \"llama3\" is supported)")]
    UnsupportedRopeScaling(String),
}

impl ConfigError {
    fn invalid(field: &str, msg: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.to_string(),
            msg: msg.into(),
        }
    }
    fn missing(field: &str) -> Self {
        Self::Missing {
            field: field.to_string(),
        }
    }
}

/// Model family. Both share the llama block; Qwen2 adds Q/K/V biases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
}

impl Arch {
    fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "llama" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            other => Err(ConfigError::UnsupportedArch(other.to_string())),
        }
    }
}

/// Which pairs of a head's dimensions one rotary frequency rotates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs `(i, i + head_dim/2)`: Hugging Face checkpoints and GGUF qwen2 (NEOX).
    Half,
    /// Pairs `(2i, 2i + 1)`: GGUF llama (the converter permuted the Q/K rows).
    Interleaved,
}

/// Llama 3.1 "llama3" rotary scaling parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: u32,
}

/// Hyper-parameters of a llama-family decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub rope_layout: RopeLayout,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

// ---------------------------------------------------------------- HF JSON --

fn json_usize(obj: &Value, field: &str) -> Result<Option<usize>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                ConfigError::invalid(field, format!("expected a non-negative integer, got {v}"))
            }),
    }
}

fn json_req_usize(obj: &Value, field: &str) -> Result<usize, ConfigError> {
    json_usize(obj, field)?.ok_or_else(|| ConfigError::missing(field))
}

fn json_f32(obj: &Value, field: &str) -> Result<Option<f32>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| ConfigError::invalid(field, format!("expected a number, got {v}"))),
    }
}

fn json_bool(obj: &Value, field: &str) -> Result<Option<bool>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| ConfigError::invalid(field, format!("expected a boolean, got {v}"))),
    }
}

fn json_u32(v: &Value, field: &str) -> Result<u32, ConfigError> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| ConfigError::invalid(field, format!("expected a token id, got {v}")))
}

fn json_eos(obj: &Value) -> Result<Vec<u32>, ConfigError> {
    match obj.get("eos_token_id") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(|v| json_u32(v, "eos_token_id")).collect(),
        Some(v) => Ok(vec![json_u32(v, "eos_token_id")?]),
    }
}

fn json_rope_scaling(obj: &Value) -> Result<Option<Llama3RopeScaling>, ConfigError> {
    let rs = match obj.get("rope_scaling") {
        None | Some(Value::Null) => return Ok(None),
        Some(rs @ Value::Object(_)) => rs,
        Some(v) => {
            return Err(ConfigError::invalid(
                "rope_scaling",
                format!("expected an object, got {v}"),
            ))
        }
    };
    let kind = rs
        .get("rope_type")
        .or_else(|| rs.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("<missing>");
    match kind {
        "default" => return Ok(None),
        "llama3" => {}
        other => return Err(ConfigError::UnsupportedRopeScaling(other.to_string())),
    }
    let get = |f: &str| -> Result<f32, ConfigError> {
        json_f32(rs, f)?.ok_or_else(|| ConfigError::missing(&format!("rope_scaling.{f}")))
    };
    let orig = json_usize(rs, "original_max_position_embeddings")?
        .ok_or_else(|| ConfigError::missing("rope_scaling.original_max_position_embeddings"))?;
    Ok(Some(Llama3RopeScaling {
        factor: get("factor")?,
        low_freq_factor: get("low_freq_factor")?,
        high_freq_factor: get("high_freq_factor")?,
        original_max_position_embeddings: u32::try_from(orig).map_err(|_| {
            ConfigError::invalid("rope_scaling.original_max_position_embeddings", "too large")
        })?,
    }))
}

// ------------------------------------------------------------------ GGUF --

fn gguf_req_usize(f: &GgufFile, key: &str) -> Result<usize, ConfigError> {
    match f.get(key) {
        None => Err(ConfigError::missing(key)),
        Some(v) => f
            .get_u64(key)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                ConfigError::invalid(key, format!("expected a non-negative integer, got {v:?}"))
            }),
    }
}

fn gguf_opt_usize(f: &GgufFile, key: &str) -> Result<Option<usize>, ConfigError> {
    match f.get(key) {
        None => Ok(None),
        Some(_) => gguf_req_usize(f, key).map(Some),
    }
}

fn gguf_opt_f32(f: &GgufFile, key: &str) -> Result<Option<f32>, ConfigError> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => f
            .get_f32(key)
            .map(Some)
            .ok_or_else(|| ConfigError::invalid(key, format!("expected a number, got {v:?}"))),
    }
}

fn gguf_eos(f: &GgufFile) -> Result<Vec<u32>, ConfigError> {
    let key = "tokenizer.ggml.eos_token_id";
    match f.get(key) {
        None => Ok(Vec::new()),
        Some(GgufValue::Array(_)) => f
            .get_i32_array(key)
            .and_then(|v| v.into_iter().map(|x| u32::try_from(x).ok()).collect())
            .ok_or_else(|| ConfigError::invalid(key, "expected token ids")),
        Some(v) => Ok(vec![f.get_u32(key).ok_or_else(|| {
            ConfigError::invalid(key, format!("expected a token id, got {v:?}"))
        })?]),
    }
}

/// Llama 3.x GGUF files carry the scaled rotary table as a `rope_freqs.weight`
/// tensor of per-frequency divisors instead of the parameters. Recognise the
/// standard Llama 3.x parameters (low 1, high 4, original 8192, factor = the
/// largest divisor) by recomputing the table; anything else is refused rather
/// than silently run with the wrong positions.
fn gguf_rope_freqs_scaling(
    cfg: &ModelConfig,
    f: &GgufFile,
) -> Result<Option<Llama3RopeScaling>, ConfigError> {
    const FIELD: &str = "rope_freqs.weight";
    let Some(t) = f.tensor(FIELD) else {
        return Ok(None);
    };
    let half = cfg.head_dim / 2;
    let bytes = (t.dtype == DType::F32 && t.byte_len == 4 * half as u64)
        .then(|| f.bytes(t.offset, t.byte_len).ok())
        .flatten()
        .ok_or_else(|| ConfigError::invalid(FIELD, format!("expected {half} f32 values")))?;
    let divisors: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let factor = divisors.iter().copied().fold(1.0f32, f32::max);
    if factor <= 1.0 {
        return Ok(None);
    }
    let scaling = Llama3RopeScaling {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let plain = ModelConfig {
        rope_scaling: None,
        ..cfg.clone()
    }
    .rope_inv_freq();
    let scaled = ModelConfig {
        rope_scaling: Some(scaling),
        ..cfg.clone()
    }
    .rope_inv_freq();
    let matches = plain.iter().zip(&scaled).zip(&divisors).all(|((p, s), d)| {
        let want = f64::from(*p) / f64::from(*s);
        (want - f64::from(*d)).abs() <= 1e-3 * want
    });
    if !matches {
        return Err(ConfigError::invalid(
            FIELD,
            "rotary divisors do not match llama3 scaling (low 1, high 4, original 8192) and no rope.scaling.* metadata is present",
        ));
    }
    Ok(Some(scaling))
}

fn gguf_rope_scaling(arch: &str, f: &GgufFile) -> Result<Option<Llama3RopeScaling>, ConfigError> {
    let key = |k: &str| format!("{arch}.rope.scaling.{k}");
    match f.get_str(&key("type")) {
        None | Some("none") => {}
        Some("llama3") => {}
        Some(other) => return Err(ConfigError::UnsupportedRopeScaling(other.to_string())),
    }
    let factor = gguf_opt_f32(f, &key("factor"))?;
    let low = gguf_opt_f32(f, &key("low_freq_factor"))?;
    let high = gguf_opt_f32(f, &key("high_freq_factor"))?;
    let orig = f.get_u32(&key("original_context_length"));
    match (factor, low, high, orig) {
        (Some(factor), Some(low_freq_factor), Some(high_freq_factor), Some(orig)) => {
            Ok(Some(Llama3RopeScaling {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: orig,
            }))
        }
        _ if f.get_str(&key("type")) == Some("llama3") => Err(ConfigError::missing(&key(
            "{factor,low_freq_factor,high_freq_factor,original_context_length}",
        ))),
        _ => Ok(None),
    }
}

impl ModelConfig {
    /// Parses a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self, ConfigError> {
        let obj: Value = serde_json::from_str(text)?;
        if !obj.is_object() {
            return Err(ConfigError::invalid("<root>", "expected a JSON object"));
        }
        let model_type = obj
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| ConfigError::missing("model_type"))?;
        let arch = Arch::parse(model_type)?;
        let hidden_size = json_req_usize(&obj, "hidden_size")?;
        let num_heads = json_req_usize(&obj, "num_attention_heads")?;
        if num_heads == 0 {
            return Err(ConfigError::invalid(
                "num_attention_heads",
                "must be nonzero",
            ));
        }
        let attention_bias = match arch {
            Arch::Qwen2 => true,
            Arch::Llama => json_bool(&obj, "attention_bias")?.unwrap_or(false),
        };
        if arch == Arch::Qwen2 && json_bool(&obj, "use_sliding_window")? == Some(true) {
            return Err(ConfigError::invalid(
                "use_sliding_window",
                "sliding-window attention is unsupported",
            ));
        }
        if arch == Arch::Llama && attention_bias {
            return Err(ConfigError::invalid(
                "attention_bias",
                "llama with attention_bias (o_proj bias) is unsupported",
            ));
        }
        let cfg = Self {
            arch,
            hidden_size,
            intermediate_size: json_req_usize(&obj, "intermediate_size")?,
            num_layers: json_req_usize(&obj, "num_hidden_layers")?,
            num_heads,
            num_kv_heads: json_usize(&obj, "num_key_value_heads")?.unwrap_or(num_heads),
            head_dim: json_usize(&obj, "head_dim")?.unwrap_or(hidden_size / num_heads),
            vocab_size: json_req_usize(&obj, "vocab_size")?,
            rms_norm_eps: json_f32(&obj, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: json_f32(&obj, "rope_theta")?.unwrap_or(10000.0),
            rope_scaling: json_rope_scaling(&obj)?,
            max_position_embeddings: json_usize(&obj, "max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: json_bool(&obj, "tie_word_embeddings")?.unwrap_or(false),
            attention_bias,
            rope_layout: RopeLayout::Half,
            bos_token_id: obj
                .get("bos_token_id")
                .filter(|v| !v.is_null())
                .map(|v| json_u32(v, "bos_token_id"))
                .transpose()?,
            eos_token_ids: json_eos(&obj)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads the configuration from GGUF metadata (`general.architecture` and
    /// the `{arch}.*` keys) and the tensor directory (tied = no `output.weight`).
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ConfigError> {
        let arch_name = file
            .get_str("general.architecture")
            .ok_or_else(|| ConfigError::missing("general.architecture"))?;
        let arch = Arch::parse(arch_name)?;
        let k = |s: &str| format!("{arch_name}.{s}");
        let hidden_size = gguf_req_usize(file, &k("embedding_length"))?;
        let num_heads = gguf_req_usize(file, &k("attention.head_count"))?;
        if num_heads == 0 {
            return Err(ConfigError::invalid(
                &k("attention.head_count"),
                "must be nonzero",
            ));
        }
        let vocab_size = match gguf_opt_usize(file, &k("vocab_size"))? {
            Some(v) => v,
            None => file
                .get_str_array("tokenizer.ggml.tokens")
                .map(|t| t.len())
                .ok_or_else(|| {
                    ConfigError::missing(&format!("{} (or tokenizer.ggml.tokens)", k("vocab_size")))
                })?,
        };
        let rope_dim = gguf_opt_usize(file, &k("rope.dimension_count"))?;
        let head_dim = gguf_opt_usize(file, &k("attention.key_length"))?
            .or(rope_dim)
            .unwrap_or(hidden_size / num_heads);
        if rope_dim.is_some_and(|r| r != head_dim) {
            return Err(ConfigError::invalid(
                &k("rope.dimension_count"),
                format!("partial rotary ({rope_dim:?} of head_dim {head_dim}) is unsupported"),
            ));
        }
        let mut cfg = Self {
            arch,
            hidden_size,
            intermediate_size: gguf_req_usize(file, &k("feed_forward_length"))?,
            num_layers: gguf_req_usize(file, &k("block_count"))?,
            num_heads,
            num_kv_heads: gguf_opt_usize(file, &k("attention.head_count_kv"))?.unwrap_or(num_heads),
            head_dim,
            vocab_size,
            rms_norm_eps: gguf_opt_f32(file, &k("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            rope_theta: gguf_opt_f32(file, &k("rope.freq_base"))?.unwrap_or(10000.0),
            rope_scaling: gguf_rope_scaling(arch_name, file)?,
            max_position_embeddings: gguf_opt_usize(file, &k("context_length"))?.unwrap_or(2048),
            tie_word_embeddings: !file.has_tensor("output.weight"),
            attention_bias: arch == Arch::Qwen2,
            rope_layout: match arch {
                Arch::Llama => RopeLayout::Interleaved,
                Arch::Qwen2 => RopeLayout::Half,
            },
            bos_token_id: file.get_u32("tokenizer.ggml.bos_token_id"),
            eos_token_ids: gguf_eos(file)?,
        };
        cfg.validate()?;
        if cfg.rope_scaling.is_none() {
            cfg.rope_scaling = gguf_rope_freqs_scaling(&cfg, file)?;
        }
        Ok(cfg)
    }

    /// Checks the dimensions are nonzero and consistent.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let nonzero = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
        ];
        for (field, v) in nonzero {
            if v == 0 {
                return Err(ConfigError::invalid(field, "must be nonzero"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(ConfigError::invalid(
                "num_kv_heads",
                format!(
                    "num_heads={} is not a multiple of num_kv_heads={}",
                    self.num_heads, self.num_kv_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ConfigError::invalid(
                "head_dim",
                format!("{} is odd; rotary needs pairs", self.head_dim),
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(ConfigError::invalid(
                "rms_norm_eps",
                format!("{} is not positive", self.rms_norm_eps),
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(ConfigError::invalid(
                "rope_theta",
                format!("{} must be > 1", self.rope_theta),
            ));
        }
        if let Some(s) = &self.rope_scaling {
            let ok = s.factor >= 1.0
                && s.low_freq_factor > 0.0
                && s.high_freq_factor > s.low_freq_factor
                && s.original_max_position_embeddings > 0;
            if !ok {
                return Err(ConfigError::invalid(
                    "rope_scaling",
                    format!("inconsistent llama3 parameters {s:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Rotary inverse frequencies (len head_dim/2): theta^(-2i/head_dim), with
    /// the Llama 3.1 "llama3" scaling applied when set (same formula as HF
    /// transformers `_compute_llama3_parameters`). Computed in f64.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim as f64;
        let theta = f64::from(self.rope_theta);
        (0..self.head_dim / 2)
            .map(|i| {
                let base = 1.0 / theta.powf((2 * i) as f64 / d);
                let Some(s) = &self.rope_scaling else {
                    return base as f32;
                };
                let factor = f64::from(s.factor);
                let low = f64::from(s.low_freq_factor);
                let high = f64::from(s.high_freq_factor);
                let orig = f64::from(s.original_max_position_embeddings);
                let wavelen = 2.0 * std::f64::consts::PI / base;
                let out = if wavelen < orig / high {
                    base
                } else if wavelen > orig / low {
                    base / factor
                } else {
                    let smooth = (orig / wavelen - low) / (high - low);
                    (1.0 - smooth) * base / factor + smooth * base
                };
                out as f32
            })
            .collect()
    }
}
