//! Conversions between the wire types of `weft.cluster.v1` and the model
//! layer's types.

use weft_kernels::DType;
use weft_model::config::{Arch, Llama3RopeScaling, ModelConfig, RopeLayout};
use weft_proto::cluster::v1 as pb;

use crate::WorkerError;

pub fn config_to_proto(c: &ModelConfig) -> pb::ModelConfig {
    pb::ModelConfig {
        arch: match c.arch {
            Arch::Llama => pb::Architecture::Llama,
            Arch::Qwen2 => pb::Architecture::Qwen2,
        } as i32,
        hidden_size: c.hidden_size as u32,
        intermediate_size: c.intermediate_size as u32,
        num_layers: c.num_layers as u32,
        num_heads: c.num_heads as u32,
        num_kv_heads: c.num_kv_heads as u32,
        head_dim: c.head_dim as u32,
        vocab_size: c.vocab_size as u32,
        rms_norm_eps: c.rms_norm_eps,
        rope_theta: c.rope_theta,
        rope_scaling: c.rope_scaling.as_ref().map(|s| pb::Llama3RopeScaling {
            factor: s.factor,
            low_freq_factor: s.low_freq_factor,
            high_freq_factor: s.high_freq_factor,
            original_max_position_embeddings: s.original_max_position_embeddings,
        }),
        max_position_embeddings: c.max_position_embeddings as u32,
        tie_word_embeddings: c.tie_word_embeddings,
        attention_bias: c.attention_bias,
        rope_layout: match c.rope_layout {
            RopeLayout::Half => pb::RopeLayout::Half,
            RopeLayout::Interleaved => pb::RopeLayout::Interleaved,
        } as i32,
    }
}

pub fn config_from_proto(p: &pb::ModelConfig, eos: &[u32]) -> Result<ModelConfig, WorkerError> {
    let bad = |what: &str| WorkerError::InvalidArgument(format!("model config: {what}"));
    let arch = match pb::Architecture::try_from(p.arch) {
        Ok(pb::Architecture::Llama) => Arch::Llama,
        Ok(pb::Architecture::Qwen2) => Arch::Qwen2,
        _ => return Err(bad("unknown architecture")),
    };
    let rope_layout = match pb::RopeLayout::try_from(p.rope_layout) {
        Ok(pb::RopeLayout::Half) => RopeLayout::Half,
        Ok(pb::RopeLayout::Interleaved) => RopeLayout::Interleaved,
        _ => return Err(bad("unknown rope layout")),
    };
    let cfg = ModelConfig {
        arch,
        hidden_size: p.hidden_size as usize,
        intermediate_size: p.intermediate_size as usize,
        num_layers: p.num_layers as usize,
        num_heads: p.num_heads as usize,
        num_kv_heads: p.num_kv_heads as usize,
        head_dim: p.head_dim as usize,
        vocab_size: p.vocab_size as usize,
        rms_norm_eps: p.rms_norm_eps,
        rope_theta: p.rope_theta,
        rope_scaling: p.rope_scaling.as_ref().map(|s| Llama3RopeScaling {
            factor: s.factor,
            low_freq_factor: s.low_freq_factor,
            high_freq_factor: s.high_freq_factor,
            original_max_position_embeddings: s.original_max_position_embeddings,
        }),
        max_position_embeddings: p.max_position_embeddings as usize,
        tie_word_embeddings: p.tie_word_embeddings,
        attention_bias: p.attention_bias,
        rope_layout,
        bos_token_id: None,
        eos_token_ids: eos.to_vec(),
    };
    cfg.validate().map_err(|e| bad(&e.to_string()))?;
    Ok(cfg)
}

pub fn dtype_to_proto(d: DType) -> pb::TensorDType {
    match d {
        DType::F32 => pb::TensorDType::F32,
        DType::F16 => pb::TensorDType::F16,
        DType::BF16 => pb::TensorDType::Bf16,
        DType::Q8_0 => pb::TensorDType::Q80,
        DType::Q4_0 => pb::TensorDType::Q40,
        DType::Q4_1 => pb::TensorDType::Q41,
    }
}

pub fn dtype_from_proto(v: i32) -> Result<DType, WorkerError> {
    Ok(match pb::TensorDType::try_from(v) {
        Ok(pb::TensorDType::F32) => DType::F32,
        Ok(pb::TensorDType::F16) => DType::F16,
        Ok(pb::TensorDType::Bf16) => DType::BF16,
        Ok(pb::TensorDType::Q80) => DType::Q8_0,
        Ok(pb::TensorDType::Q40) => DType::Q4_0,
        Ok(pb::TensorDType::Q41) => DType::Q4_1,
        _ => {
            return Err(WorkerError::CorruptStream(format!(
                "unknown tensor dtype {v}"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips() {
        let cfg = ModelConfig {
            arch: Arch::Qwen2,
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 8,
            num_kv_heads: 2,
            head_dim: 8,
            vocab_size: 256,
            rms_norm_eps: 1e-6,
            rope_theta: 500000.0,
            rope_scaling: Some(Llama3RopeScaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            }),
            max_position_embeddings: 1024,
            tie_word_embeddings: true,
            attention_bias: true,
            rope_layout: RopeLayout::Half,
            bos_token_id: None,
            eos_token_ids: vec![2, 5],
        };
        let back = config_from_proto(&config_to_proto(&cfg), &[2, 5]).expect("valid");
        assert_eq!(back, cfg);
        for d in [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::Q8_0,
            DType::Q4_0,
            DType::Q4_1,
        ] {
            assert_eq!(
                dtype_from_proto(dtype_to_proto(d) as i32).expect("known"),
                d
            );
        }
        assert!(dtype_from_proto(99).is_err());
    }
}
