//! ModelConfig: HF config.json parsing and the rotary frequency table.

use weft_model::config::{Arch, ConfigError, Llama3RopeScaling, ModelConfig, RopeLayout};

const LLAMA31_8B: &str = r#"{"architectures":["LlamaForCausalLM"],"attention_bias":false,"attention_dropout":0.0,
"bos_token_id":128000,"eos_token_id":[128001,128008,128009],"hidden_act":"silu","hidden_size":4096,
"initializer_range":0.02,"intermediate_size":14336,"max_position_embeddings":131072,"mlp_bias":false,
"model_type":"llama","num_attention_heads":32,"num_hidden_layers":32,"num_key_value_heads":8,"pretraining_tp":1,
"rms_norm_eps":1e-05,"rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
"original_max_position_embeddings":8192,"rope_type":"llama3"},"rope_theta":500000.0,"tie_word_embeddings":false,
"torch_dtype":"bfloat16","transformers_version":"4.43.0.dev0","use_cache":true,"vocab_size":128256}"#;

const QWEN25_05B: &str = r#"{"architectures":["Qwen2ForCausalLM"],"attention_dropout":0.0,"bos_token_id":151643,
"eos_token_id":151645,"hidden_act":"silu","hidden_size":896,"initializer_range":0.02,"intermediate_size":4864,
"max_position_embeddings":32768,"max_window_layers":21,"model_type":"qwen2","num_attention_heads":14,
"num_hidden_layers":24,"num_key_value_heads":2,"rms_norm_eps":1e-06,"rope_theta":1000000.0,"sliding_window":32768,
"tie_word_embeddings":true,"torch_dtype":"bfloat16","transformers_version":"4.43.1","use_cache":true,
"use_sliding_window":false,"vocab_size":151936}"#;

#[test]
fn parses_llama31_config() {
    let c = ModelConfig::from_hf_json(LLAMA31_8B).unwrap();
    assert_eq!(c.arch, Arch::Llama);
    assert_eq!(
        (c.hidden_size, c.intermediate_size, c.num_layers),
        (4096, 14336, 32)
    );
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (32, 8, 128));
    assert_eq!(c.vocab_size, 128256);
    assert_eq!(c.rms_norm_eps, 1e-5);
    assert_eq!(c.rope_theta, 500000.0);
    assert_eq!(
        c.rope_scaling,
        Some(Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192
        })
    );
    assert_eq!(c.max_position_embeddings, 131072);
    assert!(!c.tie_word_embeddings && !c.attention_bias);
    assert_eq!(c.rope_layout, RopeLayout::Half);
    assert_eq!(c.bos_token_id, Some(128000));
    assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
}

#[test]
fn parses_qwen2_config() {
    let c = ModelConfig::from_hf_json(QWEN25_05B).unwrap();
    assert_eq!(c.arch, Arch::Qwen2);
    assert_eq!((c.num_heads, c.num_kv_heads, c.head_dim), (14, 2, 64));
    assert!(c.attention_bias, "qwen2 has q/k/v biases");
    assert!(c.tie_word_embeddings);
    assert_eq!(c.rope_scaling, None);
    assert_eq!(c.eos_token_ids, vec![151645]);
    assert_eq!(c.rms_norm_eps, 1e-6);
}

#[test]
fn defaults_and_legacy_type_key() {
    let text = r#"{"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
        "num_attention_heads":8,"vocab_size":256,
        "rope_scaling":{"type":"llama3","factor":32.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
        "original_max_position_embeddings":8192}}"#;
    let c = ModelConfig::from_hf_json(text).unwrap();
    assert_eq!(c.num_kv_heads, 8, "num_key_value_heads defaults to heads");
    assert_eq!(c.head_dim, 8, "head_dim defaults to hidden/heads");
    assert_eq!(c.rope_theta, 10000.0);
    assert!(!c.tie_word_embeddings);
    assert_eq!(c.rope_scaling.unwrap().factor, 32.0);
    assert!(c.eos_token_ids.is_empty());
}

fn err(text: &str) -> String {
    let e: ConfigError = ModelConfig::from_hf_json(text).unwrap_err();
    e.to_string()
}

#[test]
fn refuses_bad_configs() {
    let yarn = LLAMA31_8B.replace("\"llama3\"", "\"yarn\"");
    assert!(
        err(&yarn).contains("unsupported rope_scaling type"),
        "{}",
        err(&yarn)
    );
    let mistral = LLAMA31_8B.replace("\"model_type\":\"llama\"", "\"model_type\":\"mistral\"");
    assert!(err(&mistral).contains("mistral"));
    let no_hidden = LLAMA31_8B.replace("\"hidden_size\":4096,", "");
    assert!(err(&no_hidden).contains("hidden_size"));
    let bad_kv = LLAMA31_8B.replace("\"num_key_value_heads\":8", "\"num_key_value_heads\":5");
    assert!(err(&bad_kv).contains("num_kv_heads"), "{}", err(&bad_kv));
    let neg = LLAMA31_8B.replace("\"vocab_size\":128256", "\"vocab_size\":-3");
    assert!(err(&neg).contains("vocab_size"));
    assert!(err("[1,2]").contains("object"));
    assert!(err("{").contains("JSON"));
    let swa = QWEN25_05B.replace(
        "\"use_sliding_window\":false",
        "\"use_sliding_window\":true",
    );
    assert!(err(&swa).contains("use_sliding_window"));
}

/// Independent transcription of HF `_compute_llama3_parameters`.
fn hf_llama3_inv_freq(
    theta: f64,
    dim: usize,
    factor: f64,
    low: f64,
    high: f64,
    old_ctx: f64,
) -> Vec<f64> {
    let inv_freq: Vec<f64> = (0..dim)
        .step_by(2)
        .map(|k| 1.0 / theta.powf(k as f64 / dim as f64))
        .collect();
    let low_freq_wavelen = old_ctx / low;
    let high_freq_wavelen = old_ctx / high;
    inv_freq
        .iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            let llama = if wavelen > low_freq_wavelen {
                f / factor
            } else {
                f
            };
            let smooth_factor = (old_ctx / wavelen - low) / (high - low);
            let smoothed = (1.0 - smooth_factor) * llama / factor + smooth_factor * llama;
            // HF: is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
            let is_medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
            if is_medium {
                smoothed
            } else {
                llama
            }
        })
        .collect()
}

#[test]
fn rope_inv_freq_llama3_matches_hf_formula() {
    let c = ModelConfig::from_hf_json(LLAMA31_8B).unwrap();
    let got = c.rope_inv_freq();
    let want = hf_llama3_inv_freq(500000.0, 128, 8.0, 1.0, 4.0, 8192.0);
    assert_eq!(got.len(), 64);
    let mut seen = [false; 3]; // high, medium, low bands all exercised
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(((*g as f64) - w).abs() <= 1e-6 * w, "i={i}: {g} vs {w}");
        let base = 1.0 / 500000f64.powf(2.0 * i as f64 / 128.0);
        let band = if (w - base).abs() < 1e-12 * base {
            0
        } else if (w - base / 8.0).abs() < 1e-12 * base {
            2
        } else {
            1
        };
        seen[band] = true;
    }
    assert_eq!(seen, [true, true, true]);
    assert_eq!(got[0], 1.0);

    let plain = ModelConfig {
        rope_scaling: None,
        ..c
    };
    for (i, f) in plain.rope_inv_freq().iter().enumerate() {
        let w = 500000f64.powf(-(2.0 * i as f64) / 128.0);
        assert!(((*f as f64) - w).abs() <= 1e-6 * w);
    }
}
