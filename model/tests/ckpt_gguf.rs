//! GGUF reader: round trip through a minimal writer, corruption and
//! truncation, a tiny quantized llama checkpoint, and (if present) SmolLM2.

mod ckpt_common;

use std::path::Path;

use weft_kernels::DType;
use weft_model::checkpoint::{Checkpoint, Format, LoadError, TensorName};
use weft_model::config::RopeLayout;
use weft_model::gguf::{GgufFile, GgufValue};
use weft_model::shard::{PlanError, ShardPlan};

use ckpt_common::gguf_writer::{rand_bytes, s, write, Builder};

// ---------------------------------------------------------- round trip --

fn sample_builder() -> Builder {
    use GgufValue as V;
    let mut b = Builder::new();
    b.kv("general.architecture", s("llama"))
        .kv("v.u8", V::U8(7))
        .kv("v.i8", V::I8(-7))
        .kv("v.u16", V::U16(700))
        .kv("v.i16", V::I16(-700))
        .kv("v.u32", V::U32(70000))
        .kv("v.i32", V::I32(-70000))
        .kv("v.u64", V::U64(1 << 40))
        .kv("v.i64", V::I64(-5))
        .kv("v.f32", V::F32(0.5))
        .kv("v.f64", V::F64(0.25))
        .kv("v.bool", V::Bool(true))
        .kv("v.strs", V::Array(vec![s("a"), s("βγ"), s("")]))
        .kv("v.ints", V::Array(vec![V::I32(1), V::I32(-2), V::I32(3)]))
        .kv(
            "v.nested",
            V::Array(vec![V::Array(vec![V::U8(1)]), V::Array(vec![])]),
        )
        .tensor("f32", &[8, 3], 0, rand_bytes(8 * 3 * 4, 1))
        .tensor("f16", &[16, 2], 1, rand_bytes(16 * 2 * 2, 2))
        .tensor("q8", &[64, 2], 8, rand_bytes(2 * 2 * 34, 3))
        .tensor("weird_q4k", &[256], 12, rand_bytes(144, 4))
        .tensor("q41", &[32, 3], 3, rand_bytes(3 * 20, 5));
    b
}

#[test]
fn reads_back_metadata_and_tensors() {
    let dir = tempfile::tempdir().unwrap();
    for version in [3, 2] {
        let mut b = sample_builder();
        b.version = version;
        let path = write(dir.path(), "sample.gguf", &b.build());
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version(), version);
        assert_eq!(f.get_str("general.architecture"), Some("llama"));
        assert_eq!(f.get_u32("v.u8"), Some(7));
        assert_eq!(f.get_u32("v.i8"), None, "negative does not fit u32");
        assert_eq!(f.get_u32("v.u16"), Some(700));
        assert_eq!(f.get_u32("v.u32"), Some(70000));
        assert_eq!(f.get_u32("v.u64"), None, "2^40 does not fit u32");
        assert_eq!(f.get_u64("v.u64"), Some(1 << 40));
        assert_eq!(f.get_f32("v.f32"), Some(0.5));
        assert_eq!(f.get_f32("v.f64"), Some(0.25));
        assert_eq!(f.get("v.bool"), Some(&GgufValue::Bool(true)));
        assert_eq!(f.get_str_array("v.strs"), Some(vec!["a", "βγ", ""]));
        assert_eq!(f.get_i32_array("v.ints"), Some(vec![1, -2, 3]));
        assert_eq!(f.get_str_array("v.ints"), None);
        assert_eq!(f.metadata().len(), b.kv.len());
        assert_eq!(
            f.metadata()["v.nested"],
            b.kv.iter().find(|(k, _)| k == "v.nested").unwrap().1
        );

        let names: Vec<_> = f.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["f32", "f16", "q8", "q41"],
            "unsupported types are kept aside"
        );
        for (name, dims, _, data) in &b.tensors {
            if name == "weird_q4k" {
                assert!(f.tensor(name).is_none() && f.has_tensor(name));
                match f.require_tensor(name) {
                    Err(LoadError::UnsupportedDType {
                        tensor,
                        type_id: 12,
                    }) => assert_eq!(tensor, "weird_q4k"),
                    other => panic!("{other:?}"),
                }
                continue;
            }
            let t = f.tensor(name).unwrap();
            assert_eq!(&t.dims, dims);
            assert_eq!(t.offset % 32, 0);
            assert_eq!(f.bytes(t.offset, t.byte_len).unwrap(), &data[..], "{name}");
        }
        assert_eq!(f.tensor("f32").unwrap().dtype, DType::F32);
        assert_eq!(f.tensor("f16").unwrap().dtype, DType::F16);
        assert_eq!(f.tensor("q8").unwrap().dtype, DType::Q8_0);
        assert_eq!(f.tensor("q41").unwrap().dtype, DType::Q4_1);
        assert!(matches!(
            f.require_tensor("nope"),
            Err(LoadError::MissingTensor { .. })
        ));
        assert!(f.bytes(u64::MAX, 2).is_err());
        assert!(f.bytes(0, 1 << 40).is_err());
    }
}

#[test]
fn truncated_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let full = sample_builder().build();
    let path = dir.path().join("t.gguf");
    for len in 0..full.len() {
        std::fs::write(&path, &full[..len]).unwrap();
        let r = GgufFile::open(&path);
        assert!(r.is_err(), "prefix of {len}/{} bytes opened", full.len());
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("t.gguf"), "error names the file: {msg}");
    }
    std::fs::write(&path, &full).unwrap();
    GgufFile::open(&path).unwrap();
}

/// Offset of the first byte after the fixed header (magic, version, counts).
const AFTER_COUNTS: usize = 24;

#[test]
fn corrupted_header_fields_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let full = sample_builder().build();
    let key0 = "general.architecture".len();
    let first_value_type = AFTER_COUNTS + 8 + key0;
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut patch = |what: &'static str, at: usize, bytes: &[u8]| {
        let mut v = full.clone();
        v[at..at + bytes.len()].copy_from_slice(bytes);
        cases.push((what, v));
    };
    patch("magic", 0, b"GGUG");
    patch("version 1", 4, &1u32.to_le_bytes());
    patch("version 4", 4, &4u32.to_le_bytes());
    patch("big-endian version", 4, &3u32.to_be_bytes());
    patch("tensor count", 8, &u64::MAX.to_le_bytes());
    patch("tensor count +1", 8, &6u64.to_le_bytes());
    patch("kv count", 16, &(1u64 << 60).to_le_bytes());
    patch("key length", AFTER_COUNTS, &u64::MAX.to_le_bytes());
    patch("key length 2^32", AFTER_COUNTS, &(1u64 << 32).to_le_bytes());
    patch("value type", first_value_type, &99u32.to_le_bytes());
    patch(
        "string length",
        first_value_type + 4,
        &(u64::MAX - 3).to_le_bytes(),
    );
    for (what, bytes) in &cases {
        let path = write(dir.path(), "c.gguf", bytes);
        assert!(GgufFile::open(&path).is_err(), "{what} accepted");
    }
}

#[test]
fn corrupted_fields_deeper_in_the_header_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let full = sample_builder().build();
    // Fields located by searching the encoded file.
    let find = |needle: &[u8]| {
        full.windows(needle.len())
            .position(|w| w == needle)
            .unwrap()
    };
    let strs_array = find(b"v.strs") + 6; // type id (9), then element type, count
    let q8_info = find(b"\x02\x00\x00\x00\x00\x00\x00\x00q8") + 10; // name "q8" -> n_dims
    let mut more: Vec<(&str, usize, Vec<u8>)> = vec![
        (
            "array count",
            strs_array + 8,
            (u64::MAX / 2).to_le_bytes().to_vec(),
        ),
        (
            "array elem type",
            strs_array + 4,
            77u32.to_le_bytes().to_vec(),
        ),
        ("n_dims", q8_info, 9u32.to_le_bytes().to_vec()),
        ("dim", q8_info + 4, (1u64 << 62).to_le_bytes().to_vec()),
        ("cols off block", q8_info + 4, 63u64.to_le_bytes().to_vec()),
        ("rows", q8_info + 12, 1000u64.to_le_bytes().to_vec()),
        ("offset", q8_info + 24, (1u64 << 50).to_le_bytes().to_vec()),
        (
            "misaligned offset",
            q8_info + 24,
            33u64.to_le_bytes().to_vec(),
        ),
    ];
    // Bool with a value other than 0/1.
    more.push(("bool byte", find(b"v.bool") + 6 + 4, vec![2]));
    for (what, at, bytes) in more {
        let mut v = full.clone();
        v[at..at + bytes.len()].copy_from_slice(&bytes);
        let path = write(dir.path(), "c.gguf", &v);
        let r = GgufFile::open(&path);
        assert!(r.is_err(), "{what} accepted");
    }
}

#[test]
fn bad_alignment_and_duplicates_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = sample_builder();
    b.kv("general.alignment", GgufValue::U32(48));
    assert!(
        GgufFile::open(&write(dir.path(), "a.gguf", &b.build())).is_err(),
        "alignment 48"
    );
    let mut b = sample_builder();
    b.kv("v.u8", GgufValue::U8(1));
    assert!(
        GgufFile::open(&write(dir.path(), "d.gguf", &b.build())).is_err(),
        "duplicate key"
    );
    let mut b = sample_builder();
    b.tensor("f32", &[4], 0, vec![0; 16]);
    assert!(
        GgufFile::open(&write(dir.path(), "d.gguf", &b.build())).is_err(),
        "duplicate tensor"
    );
    let mut b = sample_builder();
    b.alignment = 64;
    b.kv("general.alignment", GgufValue::U32(64));
    let f = GgufFile::open(&write(dir.path(), "a64.gguf", &b.build())).unwrap();
    assert!(f.tensors().iter().all(|t| t.offset % 64 == 0));
}

#[test]
fn mutated_headers_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let full = sample_builder().build();
    let header_end = GgufFile::open(&write(dir.path(), "ok.gguf", &full))
        .unwrap()
        .data_offset() as usize;
    let path = dir.path().join("m.gguf");
    let mut errors = 0;
    for at in 0..header_end {
        for x in [0x01u8, 0x80, 0xff] {
            let mut v = full.clone();
            v[at] ^= x;
            std::fs::write(&path, &v).unwrap();
            errors += GgufFile::open(&path).is_err() as usize;
        }
    }
    assert!(
        errors > header_end / 2,
        "most header corruptions are detected ({errors})"
    );
}

// ------------------------------------------------- tiny llama in GGUF --

const HIDDEN: u64 = 64;
const INTER: u64 = 128;
const VOCAB: u64 = 96;
const KV_DIM: u64 = 32; // 4 kv heads x head_dim 8

fn data(type_id: u32, cols: u64, rows: u64, seed: u64) -> Vec<u8> {
    let row = match type_id {
        0 => cols * 4,
        1 => cols * 2,
        2 => cols / 32 * 18,
        3 => cols / 32 * 20,
        8 => cols / 32 * 34,
        _ => unreachable!(),
    };
    rand_bytes((row * rows) as usize, seed)
}

fn tiny_llama_metadata(theta: f32) -> Builder {
    use GgufValue as V;
    let mut b = Builder::new();
    let tokens: Vec<GgufValue> = (0..VOCAB).map(|i| s(&format!("t{i}"))).collect();
    b.kv("general.architecture", s("llama"))
        .kv("llama.block_count", V::U32(2))
        .kv("llama.embedding_length", V::U32(HIDDEN as u32))
        .kv("llama.feed_forward_length", V::U32(INTER as u32))
        .kv("llama.attention.head_count", V::U32(8))
        .kv("llama.attention.head_count_kv", V::U32(4))
        .kv("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5))
        .kv("llama.rope.freq_base", V::F32(theta))
        .kv("llama.context_length", V::U32(2048))
        .kv("llama.rope.dimension_count", V::U32(8))
        .kv("tokenizer.ggml.tokens", V::Array(tokens))
        .kv("tokenizer.ggml.bos_token_id", V::U32(1))
        .kv("tokenizer.ggml.eos_token_id", V::U32(2));
    b
}

fn tiny_llama_gguf(rope_freqs: Option<Vec<f32>>, theta: f32) -> Builder {
    let mut b = tiny_llama_metadata(theta);
    let mut seed = 100;
    let mut t = |b: &mut Builder, name: &str, ty: u32, cols: u64, rows: Option<u64>| {
        seed += 1;
        let dims: Vec<u64> = match rows {
            Some(r) => vec![cols, r],
            None => vec![cols],
        };
        b.tensor(name, &dims, ty, data(ty, cols, rows.unwrap_or(1), seed));
    };
    t(&mut b, "token_embd.weight", 8, HIDDEN, Some(VOCAB));
    for l in 0..2 {
        t(
            &mut b,
            &format!("blk.{l}.attn_norm.weight"),
            0,
            HIDDEN,
            None,
        );
        t(
            &mut b,
            &format!("blk.{l}.attn_q.weight"),
            8,
            HIDDEN,
            Some(HIDDEN),
        );
        t(
            &mut b,
            &format!("blk.{l}.attn_k.weight"),
            3,
            HIDDEN,
            Some(KV_DIM),
        );
        t(
            &mut b,
            &format!("blk.{l}.attn_v.weight"),
            1,
            HIDDEN,
            Some(KV_DIM),
        );
        t(
            &mut b,
            &format!("blk.{l}.attn_output.weight"),
            8,
            HIDDEN,
            Some(HIDDEN),
        );
        t(&mut b, &format!("blk.{l}.ffn_norm.weight"), 0, HIDDEN, None);
        t(
            &mut b,
            &format!("blk.{l}.ffn_gate.weight"),
            2,
            HIDDEN,
            Some(INTER),
        );
        t(
            &mut b,
            &format!("blk.{l}.ffn_up.weight"),
            1,
            HIDDEN,
            Some(INTER),
        );
        t(
            &mut b,
            &format!("blk.{l}.ffn_down.weight"),
            8,
            INTER,
            Some(HIDDEN),
        );
    }
    t(&mut b, "output_norm.weight", 0, HIDDEN, None);
    if let Some(freqs) = rope_freqs {
        let bytes = freqs.iter().flat_map(|f| f.to_le_bytes()).collect();
        b.tensor("rope_freqs.weight", &[freqs.len() as u64], 0, bytes);
    }
    b
}

#[test]
fn gguf_llama_checkpoint_config_and_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "tiny.gguf",
        &tiny_llama_gguf(None, 10000.0).build(),
    );
    let ckpt = Checkpoint::open(&path).unwrap();
    assert_eq!(ckpt.format(), Format::Gguf);
    assert!(ckpt.gguf().is_some() && ckpt.tokenizer_json().is_none());
    let c = ckpt.config();
    assert_eq!(
        (c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim),
        (2, 8, 4, 8)
    );
    assert_eq!(
        (c.hidden_size, c.intermediate_size, c.vocab_size),
        (64, 128, 96)
    );
    assert!(c.tie_word_embeddings);
    assert_eq!(c.rope_layout, RopeLayout::Interleaved);
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.clone()),
        (Some(1), vec![2])
    );
    assert_eq!(c.rope_scaling, None);

    let q = ckpt.tensor(TensorName::Q(1)).unwrap();
    assert_eq!((q.dtype, q.rows, q.cols), (DType::Q8_0, 64, 64));
    assert_eq!(q.source_name(), "blk.1.attn_q.weight");
    let n = ckpt.tensor(TensorName::FinalNorm).unwrap();
    assert_eq!((n.dtype, n.rows, n.cols), (DType::F32, 64, 1));
    let head = ckpt.tensor(TensorName::LmHead).unwrap();
    assert_eq!(
        head.source_name(),
        "token_embd.weight",
        "tied head resolves to the embedding"
    );
}

#[test]
fn gguf_quantized_shards_and_block_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "tiny.gguf",
        &tiny_llama_gguf(None, 10000.0).build(),
    );
    let ckpt = Checkpoint::open(&path).unwrap();
    let c = ckpt.config();
    let dtypes = ShardPlan::checkpoint_col_split_dtypes(&ckpt).unwrap();
    assert_eq!(dtypes, vec![DType::Q8_0]);
    assert_eq!(ShardPlan::valid_tp_degrees(c, &dtypes), vec![1, 2]);
    for tp in [1, 2] {
        let plan = ShardPlan::for_checkpoint(&ckpt, tp).unwrap();
        let shards = ckpt_common::check_reassembly(&ckpt, &plan);
        assert!(shards.iter().all(|s| s.get(TensorName::LmHead).is_none()));
    }
    // tp=4: O gets 64/4 = 16 input columns per rank, off the 32-element Q8_0 block.
    let e = ShardPlan::for_checkpoint(&ckpt, 4).unwrap_err();
    assert!(
        matches!(
            e,
            PlanError::BlockMisaligned {
                block: 32,
                cols: 16,
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("tp=4") && msg.contains("32-element Q8_0 block"),
        "{msg}"
    );
    assert!(
        msg.ends_with("valid tp degrees for this model: 1, 2"),
        "{msg}"
    );
    // The same model in f16 can go to tp=4.
    assert!(ShardPlan::new(c, 4, &[DType::F16]).is_ok());

    let o = ckpt.tensor(TensorName::O(0)).unwrap();
    let mut out = Vec::new();
    let err = o
        .cols_slice(0..2, 16..48, &mut out)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blk.0.attn_output.weight") && err.contains("block"),
        "{err}"
    );
    o.cols_slice(0..2, 32..64, &mut out).unwrap();
    assert_eq!(out.len(), 2 * 34);
    assert_eq!(&out[..34], &o.bytes()[34..68]);
    assert!(o.row_range_bytes(60..65).is_err());
}

#[test]
fn gguf_missing_and_misshapen_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = tiny_llama_gguf(None, 10000.0);
    b.tensors.retain(|t| t.0 != "blk.1.ffn_up.weight");
    b.tensors
        .iter_mut()
        .find(|t| t.0 == "blk.0.attn_k.weight")
        .unwrap()
        .1 = vec![HIDDEN, 64];
    let k = b
        .tensors
        .iter_mut()
        .find(|t| t.0 == "blk.0.attn_k.weight")
        .unwrap();
    k.3 = data(3, HIDDEN, 64, 9);
    let path = write(dir.path(), "bad.gguf", &b.build());
    let ckpt = Checkpoint::open(&path).unwrap();
    let e = ckpt.tensor(TensorName::Up(1)).unwrap_err().to_string();
    assert!(
        e.contains("blk.1.ffn_up.weight") && e.contains("not found"),
        "{e}"
    );
    let e = ckpt.tensor(TensorName::K(0)).unwrap_err().to_string();
    assert!(
        e.contains("blk.0.attn_k.weight") && e.contains("expects 32x64"),
        "{e}"
    );
    let plan = ShardPlan::new(ckpt.config(), 1, &[]).unwrap();
    assert!(weft_model::shard::read_shard(&ckpt, &plan, 0).is_err());
}

#[test]
fn gguf_llama3_rope_freqs_are_recognised() {
    let dir = tempfile::tempdir().unwrap();
    // Divisors HF llama3 scaling implies for head_dim 8, theta 500000, factor 8.
    let scaled = weft_model::config::ModelConfig {
        rope_scaling: Some(weft_model::config::Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        }),
        ..weft_model::synthetic::SyntheticSpec {
            rope_theta: 500000.0,
            ..weft_model::synthetic::SyntheticSpec::tiny_llama()
        }
        .config()
    };
    let plain = weft_model::config::ModelConfig {
        rope_scaling: None,
        ..scaled.clone()
    };
    let divisors: Vec<f32> = plain
        .rope_inv_freq()
        .iter()
        .zip(scaled.rope_inv_freq())
        .map(|(p, s)| p / s)
        .collect();
    assert!(
        divisors.iter().any(|&d| d > 1.0 && d < 8.0),
        "a medium band exists: {divisors:?}"
    );
    let path = write(
        dir.path(),
        "l3.gguf",
        &tiny_llama_gguf(Some(divisors.clone()), 500000.0).build(),
    );
    let ckpt = Checkpoint::open(&path).unwrap();
    assert_eq!(ckpt.config().rope_scaling, scaled.rope_scaling);

    let mut wrong = divisors;
    wrong[2] *= 1.5;
    let path = write(
        dir.path(),
        "l3bad.gguf",
        &tiny_llama_gguf(Some(wrong), 500000.0).build(),
    );
    let e = Checkpoint::open(&path).unwrap_err().to_string();
    assert!(e.contains("rope_freqs.weight"), "{e}");
}

#[test]
fn smollm2_q4_1_if_present() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        println!("note: {} absent; skipping", path.display());
        return;
    }
    let ckpt = Checkpoint::open(&path).unwrap();
    let c = ckpt.config();
    assert_eq!(
        (c.num_layers, c.num_heads, c.num_kv_heads, c.hidden_size),
        (30, 9, 3, 576)
    );
    assert!(c.tie_word_embeddings);
    assert_eq!(c.rope_layout, RopeLayout::Interleaved);
    let g = ckpt.gguf().unwrap();
    assert!(g.get_str_array("tokenizer.ggml.tokens").unwrap().len() >= c.vocab_size.min(49152));
    for name in weft_model::shard::model_tensor_names(c) {
        if let Err(e) = ckpt.tensor(name) {
            println!("note: {name}: {e}");
        }
    }
    let e = ShardPlan::new(c, 2, &[DType::Q4_1])
        .unwrap_err()
        .to_string();
    assert!(e.contains("valid tp degrees for this model: 1, 3"), "{e}");
}

#[test]
fn gguf_qwen2_config() {
    use weft_model::config::{Arch, ModelConfig};
    let dir = tempfile::tempdir().unwrap();
    let mut b = tiny_llama_metadata(1_000_000.0);
    for (k, v) in b.kv.iter_mut() {
        if let Some(rest) = k.strip_prefix("llama.") {
            *k = format!("qwen2.{rest}");
        }
        if k == "general.architecture" {
            *v = s("qwen2");
        }
    }
    b.kv("qwen2.vocab_size", GgufValue::U64(96));
    b.kv("tokenizer.ggml.eos_token_id", GgufValue::U32(7));
    b.kv.remove(
        b.kv.iter()
            .position(|(k, _)| k == "tokenizer.ggml.eos_token_id")
            .unwrap(),
    );
    b.tensor(
        "output.weight",
        &[HIDDEN, VOCAB],
        1,
        data(1, HIDDEN, VOCAB, 5),
    );
    let f = GgufFile::open(&write(dir.path(), "q.gguf", &b.build())).unwrap();
    let c = ModelConfig::from_gguf(&f).unwrap();
    assert_eq!(c.arch, Arch::Qwen2);
    assert_eq!(
        c.rope_layout,
        RopeLayout::Half,
        "qwen2 GGUF keeps the NEOX layout"
    );
    assert!(c.attention_bias && !c.tie_word_embeddings);
    assert_eq!(
        (c.vocab_size, c.rope_theta, c.eos_token_ids.clone()),
        (96, 1_000_000.0, vec![7])
    );

    b.kv("qwen2.rope.scaling.type", s("yarn"));
    let f = GgufFile::open(&write(dir.path(), "y.gguf", &b.build())).unwrap();
    let e = ModelConfig::from_gguf(&f).unwrap_err().to_string();
    assert!(e.contains("unsupported rope_scaling type"), "{e}");
}
