//! Safetensors checkpoints (synthetic), shard plans, slices and digests.

mod ckpt_common;

use weft_kernels::DType;
use weft_model::checkpoint::{Checkpoint, Format, TensorName};
use weft_model::config::{Arch, Llama3RopeScaling, ModelConfig};
use weft_model::shard::{read_shard, PlanError, ShardDigest, ShardPlan, Split};
use weft_model::synthetic::{write_checkpoint, SyntheticSpec};

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn synthetic_checkpoints_reassemble_for_tp_1_2_4() {
    let scaling = Llama3RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let specs = [
        SyntheticSpec {
            dtype: DType::F32,
            ..SyntheticSpec::tiny_llama()
        },
        SyntheticSpec {
            dtype: DType::BF16,
            shards: 3,
            rope_scaling: Some(scaling),
            ..SyntheticSpec::tiny_llama()
        },
        SyntheticSpec {
            dtype: DType::F16,
            shards: 1,
            ..SyntheticSpec::tiny_qwen2()
        },
        SyntheticSpec {
            dtype: DType::BF16,
            shards: 4,
            seed: 9,
            ..SyntheticSpec::tiny_qwen2()
        },
    ];
    for spec in specs {
        let dir = tempfile::tempdir().unwrap();
        let root = write_checkpoint(dir.path(), &spec).unwrap();
        assert_eq!(root, dir.path());
        assert_eq!(
            root.join("model.safetensors.index.json").exists(),
            spec.shards > 1
        );
        let ckpt = Checkpoint::open(&root).unwrap();
        assert_eq!(ckpt.format(), Format::Safetensors);
        assert_eq!(ckpt.config(), &spec.config(), "config.json round trip");
        assert!(ckpt.gguf().is_none());
        assert_eq!(ckpt.tensor(TensorName::Q(0)).unwrap().dtype, spec.dtype);
        if spec.arch == Arch::Qwen2 {
            assert_eq!(ckpt.tensor(TensorName::KBias(1)).unwrap().rows, 32);
        }
        let mut digests = Vec::new();
        for tp in [1, 2, 4] {
            let plan = ShardPlan::for_checkpoint(&ckpt, tp).unwrap();
            let shards = ckpt_common::check_reassembly(&ckpt, &plan);
            digests.extend(shards.iter().map(|s| s.digest()));
            assert_eq!(
                shards
                    .iter()
                    .map(|s| s.get(TensorName::LmHead).is_some())
                    .collect::<Vec<_>>(),
                vec![!spec.tie_word_embeddings; tp]
            );
        }
        let n = digests.len();
        digests.sort_unstable();
        digests.dedup();
        assert_eq!(
            digests.len(),
            n,
            "every (tp, rank) shard has its own digest"
        );
    }
}

#[test]
fn synthetic_weights_are_well_conditioned_and_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SyntheticSpec::tiny_llama();
    let ckpt = Checkpoint::open(&write_checkpoint(dir.path(), &spec).unwrap()).unwrap();
    let norm = f32s(ckpt.tensor(TensorName::AttnNorm(0)).unwrap().bytes());
    assert!(norm.iter().all(|&x| (0.89..=1.11).contains(&x)));
    let w = f32s(ckpt.tensor(TensorName::Down(1)).unwrap().bytes());
    let var = w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32;
    assert!(
        (var * 128.0 - 1.0).abs() < 0.1,
        "var*cols = {}",
        var * 128.0
    );

    let dir2 = tempfile::tempdir().unwrap();
    let again = Checkpoint::open(&write_checkpoint(dir2.path(), &spec).unwrap()).unwrap();
    let plan = ShardPlan::for_checkpoint(&ckpt, 2).unwrap();
    assert_eq!(
        read_shard(&ckpt, &plan, 1).unwrap(),
        read_shard(&again, &plan, 1).unwrap()
    );
    let dir3 = tempfile::tempdir().unwrap();
    let other = SyntheticSpec { seed: 1, ..spec };
    let other = Checkpoint::open(&write_checkpoint(dir3.path(), &other).unwrap()).unwrap();
    assert_ne!(
        read_shard(&ckpt, &plan, 1).unwrap().digest(),
        read_shard(&other, &plan, 1).unwrap().digest()
    );
}

#[test]
fn open_paths_and_tokenizer_json() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &SyntheticSpec::tiny_llama()).unwrap();
    let file = dir.path().join("model.safetensors");
    let ckpt = Checkpoint::open(&file).unwrap();
    assert_eq!(ckpt.path(), file);
    assert!(ckpt.tokenizer_json().is_none());
    std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
    assert_eq!(
        Checkpoint::open(dir.path()).unwrap().tokenizer_json(),
        Some(dir.path().join("tokenizer.json"))
    );

    let empty = tempfile::tempdir().unwrap();
    let e = Checkpoint::open(empty.path()).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    std::fs::write(empty.path().join("model.safetensors"), b"").unwrap();
    let e = Checkpoint::open(empty.path()).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    let e = Checkpoint::open(&empty.path().join("nope.gguf"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.gguf"), "{e}");
}

#[test]
fn digest_incremental_matches_shard_digest() {
    // FNV-1a 64 test vectors.
    let mut d = ShardDigest::new();
    assert_eq!(d.finish(), 0xcbf2_9ce4_8422_2325);
    d.update_bytes(b"a");
    assert_eq!(d.finish(), 0xaf63_dc4c_8601_ec8c);
    let mut d = ShardDigest::new();
    d.update_bytes(b"foobar");
    assert_eq!(d.finish(), 0x8594_4171_f739_67e8);

    let dir = tempfile::tempdir().unwrap();
    let spec = SyntheticSpec {
        dtype: DType::F16,
        shards: 2,
        ..SyntheticSpec::tiny_qwen2()
    };
    let ckpt = Checkpoint::open(&write_checkpoint(dir.path(), &spec).unwrap()).unwrap();
    let plan = ShardPlan::for_checkpoint(&ckpt, 2).unwrap();
    let shard = read_shard(&ckpt, &plan, 1).unwrap();
    let mut whole = ShardDigest::new();
    let mut chunked = ShardDigest::default();
    for t in &shard.tensors {
        whole.update(t);
        chunked.update_header(t.name, t.dtype, t.rows, t.cols, t.data.len() as u64);
        for c in t.data.chunks(7) {
            chunked.update_bytes(c);
        }
    }
    assert_eq!(whole.finish(), shard.digest());
    assert_eq!(chunked.finish(), shard.digest());
    assert_eq!(
        shard.total_bytes(),
        shard
            .tensors
            .iter()
            .map(|t| t.data.len() as u64)
            .sum::<u64>()
    );
    let mut tampered = shard.clone();
    tampered.tensors[3].data[0] ^= 1;
    assert_ne!(tampered.digest(), shard.digest());
    let mut renamed = shard.clone();
    renamed.tensors[0].rows -= 1;
    assert_ne!(renamed.digest(), shard.digest());
}

#[test]
fn truncated_or_broken_safetensors_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &SyntheticSpec::tiny_llama()).unwrap();
    let file = dir.path().join("model.safetensors");
    let full = std::fs::read(&file).unwrap();
    let header = u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    for len in [
        0,
        4,
        8,
        9,
        8 + header / 2,
        8 + header,
        8 + header + 1,
        full.len() / 2,
        full.len() - 1,
    ] {
        std::fs::write(&file, &full[..len]).unwrap();
        let e = Checkpoint::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("model.safetensors"), "len {len}: {e}");
    }
    let mut bad = full.clone();
    bad[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    std::fs::write(&file, &bad).unwrap();
    assert!(Checkpoint::open(dir.path()).is_err());

    let dir = tempfile::tempdir().unwrap();
    let spec = SyntheticSpec {
        shards: 2,
        ..SyntheticSpec::tiny_llama()
    };
    write_checkpoint(dir.path(), &spec).unwrap();
    let index = dir.path().join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    let second = dir.path().join("model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&second).unwrap();
    std::fs::write(&second, &bytes[..bytes.len() - 3]).unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
    std::fs::remove_file(&second).unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
    std::fs::write(&second, &bytes).unwrap();
    Checkpoint::open(dir.path()).unwrap();

    let escape = text.replacen(
        "model-00001-of-00002.safetensors",
        "../model-00001-of-00002.safetensors",
        1,
    );
    std::fs::write(&index, escape).unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("plain file name"), "{e}");
    let ghost = text.replacen(
        "\"weight_map\": {",
        "\"weight_map\": {\"ghost.weight\": \"model-00001-of-00002.safetensors\",",
        1,
    );
    std::fs::write(&index, ghost).unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("ghost.weight"), "{e}");
    std::fs::write(&index, "{\"weight_map\": 3}").unwrap();
    assert!(Checkpoint::open(dir.path())
        .unwrap_err()
        .to_string()
        .contains("weight_map"));
}

#[test]
fn wrong_shapes_and_missing_tensors_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &SyntheticSpec::tiny_llama()).unwrap();
    let cfg = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"intermediate_size\": 128", "\"intermediate_size\": 96"),
    )
    .unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let e = ckpt.tensor(TensorName::Gate(0)).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("96x64"),
        "{e}"
    );
    std::fs::write(&cfg, text.replace("\"llama\"", "\"qwen2\"")).unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let e = ckpt.tensor(TensorName::QBias(0)).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.0.self_attn.q_proj.bias") && e.contains("not found"),
        "{e}"
    );
}

fn smol_like() -> ModelConfig {
    ModelConfig {
        hidden_size: 576,
        intermediate_size: 1536,
        num_layers: 30,
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
        vocab_size: 49152,
        tie_word_embeddings: true,
        ..SyntheticSpec::tiny_llama().config()
    }
}

#[test]
fn plan_refusals_name_dimension_and_valid_degrees() {
    let c = smol_like();
    for tp in [2, 4] {
        let e = ShardPlan::new(&c, tp, &[DType::BF16]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "tp={tp} does not divide num_kv_heads=3; valid tp degrees for this model: 1, 3"
            )
        );
    }
    assert!(ShardPlan::new(&c, 3, &[DType::BF16]).is_ok());
    assert_eq!(ShardPlan::valid_tp_degrees(&c, &[DType::Q4_1]), vec![1, 3]);
    // Q4_1: O input 9*64/3 = 192 and down 1536/3 = 512 columns, both whole blocks.
    assert!(ShardPlan::new(&c, 3, &[DType::Q4_1, DType::F32]).is_ok());
    assert!(matches!(ShardPlan::new(&c, 0, &[]), Err(PlanError::ZeroTp)));

    let c = ModelConfig {
        vocab_size: 250,
        ..SyntheticSpec::tiny_llama().config()
    };
    let e = ShardPlan::new(&c, 4, &[]).unwrap_err().to_string();
    assert_eq!(
        e,
        "tp=4 does not divide vocab_size=250; valid tp degrees for this model: 1, 2"
    );
    let c = ModelConfig {
        intermediate_size: 96,
        ..SyntheticSpec::tiny_llama().config()
    };
    // down: 96/2 = 48 columns per rank, off the 32-element Q8_0 block.
    let e = ShardPlan::new(&c, 2, &[DType::Q8_0]).unwrap_err();
    assert!(
        matches!(
            e,
            PlanError::BlockMisaligned {
                what: "down_proj",
                cols: 48,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .ends_with("valid tp degrees for this model: 1"),
        "{e}"
    );
    let c = ModelConfig {
        intermediate_size: 90,
        ..c
    };
    let e = ShardPlan::new(&c, 4, &[DType::F16])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "tp=4 does not divide intermediate_size=90; valid tp degrees for this model: 1, 2"
    );
}

#[test]
fn slices_follow_megatron_rules() {
    let c = SyntheticSpec::tiny_qwen2().config();
    let plan = ShardPlan::new(&c, 2, &[DType::F32]).unwrap();
    let s = plan.slices(1);
    assert_eq!(s, plan.slices(1), "deterministic");
    let get = |n: TensorName| s.iter().find(|x| x.name == n).unwrap().split.clone();
    assert_eq!(get(TensorName::Embed), Split::Rows(128..256));
    assert_eq!(get(TensorName::Q(0)), Split::Rows(32..64));
    assert_eq!(get(TensorName::QBias(0)), Split::Rows(32..64));
    assert_eq!(get(TensorName::K(1)), Split::Rows(16..32));
    assert_eq!(get(TensorName::VBias(1)), Split::Rows(16..32));
    assert_eq!(get(TensorName::O(0)), Split::Cols(32..64));
    assert_eq!(get(TensorName::Gate(0)), Split::Rows(64..128));
    assert_eq!(get(TensorName::Down(0)), Split::Cols(64..128));
    assert_eq!(get(TensorName::MlpNorm(0)), Split::Replicated);
    assert_eq!(get(TensorName::FinalNorm), Split::Replicated);
    assert!(s.iter().all(|x| x.name != TensorName::LmHead), "tied");
    assert!(plan.slices(2).is_empty());
    let dir = tempfile::tempdir().unwrap();
    let ckpt =
        Checkpoint::open(&write_checkpoint(dir.path(), &SyntheticSpec::tiny_qwen2()).unwrap())
            .unwrap();
    assert!(read_shard(&ckpt, &plan, 2).is_err());
    let llama_plan = ShardPlan::new(&SyntheticSpec::tiny_llama().config(), 2, &[]).unwrap();
    assert!(read_shard(&ckpt, &llama_plan, 0)
        .unwrap_err()
        .to_string()
        .contains("config"));
}

#[test]
fn tensor_names_round_trip() {
    use TensorName::*;
    let all = [
        Embed,
        LmHead,
        FinalNorm,
        AttnNorm(0),
        Q(3),
        K(10),
        V(2),
        O(7),
        QBias(1),
        KBias(1),
        VBias(1),
        MlpNorm(4),
        Gate(5),
        Up(6),
        Down(123),
    ];
    for n in all {
        assert_eq!(TensorName::parse(&n.canonical()), Some(n), "{n}");
    }
    assert_eq!(Q(3).canonical(), "layers.3.q");
    assert_eq!(QBias(3).canonical(), "layers.3.q_bias");
    assert_eq!(Down(0).gguf_name(), "blk.0.ffn_down.weight");
    assert_eq!(KBias(2).hf_name(), "model.layers.2.self_attn.k_proj.bias");
    for bad in [
        "",
        "layers.",
        "layers.1",
        "layers.01.q",
        "layers.x.q",
        "layers.1.zz",
        "layers.-1.q",
        "lm_head.weight",
    ] {
        assert_eq!(TensorName::parse(bad), None, "{bad}");
    }
}
