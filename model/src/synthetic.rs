//! Synthetic checkpoints for tests: Hugging Face layout (config.json plus one
//! or several safetensors files) with seeded random weights.
//!
//! Linear weights are N(0, 1/cols) so activations keep unit scale through the
//! stack, norm weights are 1 + U(-0.1, 0.1), biases N(0, 0.02^2).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

use crate::checkpoint::{LoadError, TensorName};
use crate::config::{Arch, Llama3RopeScaling, ModelConfig, RopeLayout};
use crate::shard::model_tensor_names;
use weft_kernels::DType;

/// Shape and storage of a synthetic model.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticSpec {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub vocab_size: usize,
    pub rope_theta: f32,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub tie_word_embeddings: bool,
    /// F32, F16 or BF16.
    pub dtype: DType,
    /// 1 = model.safetensors; N > 1 = N files plus model.safetensors.index.json.
    pub shards: usize,
    pub seed: u64,
}

impl SyntheticSpec {
    /// hidden 64, 8 heads, 4 KV heads (head_dim 8), intermediate 128,
    /// 2 layers, vocab 256, f32, one file, untied.
    pub fn tiny_llama() -> Self {
        Self {
            arch: Arch::Llama,
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 8,
            num_kv_heads: 4,
            vocab_size: 256,
            rope_theta: 10000.0,
            rope_scaling: None,
            tie_word_embeddings: false,
            dtype: DType::F32,
            shards: 1,
            seed: 0x5eed,
        }
    }

    /// Like [`Self::tiny_llama`] but Qwen2 (Q/K/V biases), tied embeddings.
    pub fn tiny_qwen2() -> Self {
        Self {
            arch: Arch::Qwen2,
            rope_theta: 1_000_000.0,
            tie_word_embeddings: true,
            ..Self::tiny_llama()
        }
    }

    /// Llama-3-8B's shape (bf16), for measurement with seeded weights.
    pub fn llama3_8b() -> Self {
        Self {
            arch: Arch::Llama,
            hidden_size: 4096,
            intermediate_size: 14336,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 8,
            vocab_size: 128_256,
            rope_theta: 500_000.0,
            rope_scaling: Some(Llama3RopeScaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            }),
            tie_word_embeddings: false,
            dtype: DType::BF16,
            shards: 1,
            seed: 0x5eed,
        }
    }

    /// Llama-3-70B's shape (bf16).
    pub fn llama3_70b() -> Self {
        Self {
            hidden_size: 8192,
            intermediate_size: 28672,
            num_layers: 80,
            num_heads: 64,
            ..Self::llama3_8b()
        }
    }

    /// The config the written config.json describes.
    pub fn config(&self) -> ModelConfig {
        ModelConfig {
            arch: self.arch,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_layers,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads,
            head_dim: self.hidden_size / self.num_heads.max(1),
            vocab_size: self.vocab_size,
            rms_norm_eps: 1e-5,
            rope_theta: self.rope_theta,
            rope_scaling: self.rope_scaling,
            max_position_embeddings: 4096,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_bias: self.arch == Arch::Qwen2,
            rope_layout: RopeLayout::Half,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
        }
    }
}

fn config_json(c: &ModelConfig, dtype: DType) -> serde_json::Value {
    let mut v = json!({
        "architectures": [match c.arch { Arch::Llama => "LlamaForCausalLM", Arch::Qwen2 => "Qwen2ForCausalLM" }],
        "model_type": match c.arch { Arch::Llama => "llama", Arch::Qwen2 => "qwen2" },
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_ids,
        "hidden_act": "silu",
        "torch_dtype": match dtype { DType::F16 => "float16", DType::BF16 => "bfloat16", _ => "float32" },
    });
    if let Some(s) = &c.rope_scaling {
        v["rope_scaling"] = json!({
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        });
    }
    v
}

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn values(name: TensorName, rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    use TensorName::*;
    let n = rows * cols;
    match name {
        FinalNorm | AttnNorm(_) | MlpNorm(_) => (0..n)
            .map(|_| 1.0 + rng.random_range(-0.1f32..0.1))
            .collect(),
        QBias(_) | KBias(_) | VBias(_) => (0..n).map(|_| (0.02 * normal(rng)) as f32).collect(),
        _ => {
            let std = 1.0 / (cols as f64).sqrt();
            (0..n).map(|_| (std * normal(rng)) as f32).collect()
        }
    }
}

fn encode(vals: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F16 => vals
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        DType::BF16 => vals
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect(),
        _ => vals.iter().flat_map(|&x| x.to_le_bytes()).collect(),
    }
}

struct Tensor {
    hf_name: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn write_file(path: &Path, tensors: &[Tensor], dtype: Dtype) -> Result<(), LoadError> {
    let err = |msg: String| LoadError::Write {
        path: path.to_path_buf(),
        msg,
    };
    let views = tensors
        .iter()
        .map(|t| {
            Ok((
                t.hf_name.clone(),
                TensorView::new(dtype, t.shape.clone(), &t.data).map_err(|e| err(e.to_string()))?,
            ))
        })
        .collect::<Result<Vec<_>, LoadError>>()?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| err(e.to_string()))
}

/// Writes `tensors` into `shards` files plus model.safetensors.index.json.
fn write_sharded(
    dir: &Path,
    tensors: &[Tensor],
    shards: usize,
    st_dtype: Dtype,
) -> Result<(), LoadError> {
    let werr = |msg: String| LoadError::Write {
        path: dir.to_path_buf(),
        msg,
    };
    if shards > tensors.len() {
        return Err(werr(format!(
            "{} shards for only {} tensors",
            shards,
            tensors.len()
        )));
    }
    let n = tensors.len();
    let mut weight_map = BTreeMap::new();
    for k in 0..shards {
        let file = format!("model-{:05}-of-{:05}.safetensors", k + 1, shards);
        let part = &tensors[k * n / shards..(k + 1) * n / shards];
        write_file(&dir.join(&file), part, st_dtype)?;
        for t in part {
            weight_map.insert(t.hf_name.clone(), file.clone());
        }
    }
    let total: usize = tensors.iter().map(|t| t.data.len()).sum();
    let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    let index_path = dir.join("model.safetensors.index.json");
    let text = serde_json::to_string_pretty(&index).map_err(|e| werr(e.to_string()))?;
    std::fs::write(&index_path, text).map_err(LoadError::io(&index_path))?;
    Ok(())
}

/// Writes config.json and the weights of `spec` into `dir` (created if
/// needed) and returns `dir`.
pub fn write_checkpoint(dir: &Path, spec: &SyntheticSpec) -> Result<PathBuf, LoadError> {
    let werr = |msg: String| LoadError::Write {
        path: dir.to_path_buf(),
        msg,
    };
    let st_dtype = match spec.dtype {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        other => {
            return Err(werr(format!(
                "synthetic checkpoints are F32, F16 or BF16, not {other:?}"
            )))
        }
    };
    let cfg = spec.config();
    cfg.validate().map_err(|source| LoadError::Config {
        path: dir.to_path_buf(),
        source,
    })?;
    if cfg.head_dim * cfg.num_heads != cfg.hidden_size {
        return Err(werr(format!(
            "hidden_size {} is not a multiple of num_heads {}",
            cfg.hidden_size, cfg.num_heads
        )));
    }
    std::fs::create_dir_all(dir).map_err(LoadError::io(dir))?;
    let cfg_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config_json(&cfg, spec.dtype))
        .map_err(|e| werr(e.to_string()))?;
    std::fs::write(&cfg_path, text).map_err(LoadError::io(&cfg_path))?;

    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let tensors: Vec<Tensor> = model_tensor_names(&cfg)
        .into_iter()
        .map(|name| {
            let (rows, cols) = name.expected_shape(&cfg);
            let one_d = matches!(name.expected_shape(&cfg), (_, 1))
                && !matches!(name, TensorName::Embed | TensorName::LmHead);
            let shape = if one_d { vec![rows] } else { vec![rows, cols] };
            Tensor {
                hf_name: name.hf_name(),
                shape,
                data: encode(&values(name, rows, cols, &mut rng), spec.dtype),
            }
        })
        .collect();

    if spec.shards <= 1 {
        write_file(&dir.join("model.safetensors"), &tensors, st_dtype)?;
        return Ok(dir.to_path_buf());
    }
    write_sharded(dir, &tensors, spec.shards, st_dtype)?;
    Ok(dir.to_path_buf())
}
