//! Helpers shared by the checkpoint tests.
#![allow(dead_code)]

pub mod gguf_writer;

use weft_model::checkpoint::{Checkpoint, TensorName};
use weft_model::shard::{model_tensor_names, read_shard, Shard, ShardPlan, Split};

/// Reads every rank of `plan` and checks that putting the slices back
/// together per the split rule reproduces each full tensor byte-for-byte.
pub fn check_reassembly(ckpt: &Checkpoint, plan: &ShardPlan) -> Vec<Shard> {
    let tp = plan.tp();
    let shards: Vec<Shard> = (0..tp)
        .map(|r| read_shard(ckpt, plan, r).expect("read_shard"))
        .collect();
    let names = model_tensor_names(ckpt.config());
    for s in &shards {
        assert_eq!(s.world_size, tp);
        assert_eq!(s.tensors.iter().map(|t| t.name).collect::<Vec<_>>(), names);
    }
    for name in names {
        let full = ckpt.tensor(name).unwrap();
        let rb = full.row_bytes();
        let parts: Vec<_> = shards.iter().map(|s| s.get(name).unwrap()).collect();
        for p in &parts {
            assert_eq!(p.dtype, full.dtype, "{name}");
            assert_eq!(
                p.data.len(),
                p.rows * p.dtype.row_bytes(p.cols).unwrap(),
                "{name}"
            );
        }
        match &plan
            .slices(0)
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .split
        {
            Split::Replicated => {
                for p in &parts {
                    assert_eq!(p.data, full.bytes(), "{name}");
                }
            }
            Split::Rows(_) => {
                let cat: Vec<u8> = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
                assert_eq!(cat, full.bytes(), "{name} rows");
                assert_eq!(parts.iter().map(|p| p.rows).sum::<usize>(), full.rows);
            }
            Split::Cols(_) => {
                assert_eq!(
                    parts.iter().map(|p| p.cols).sum::<usize>(),
                    full.cols,
                    "{name}"
                );
                let mut cat = Vec::new();
                for r in 0..full.rows {
                    for p in &parts {
                        let prb = p.data.len() / p.rows;
                        cat.extend_from_slice(&p.data[r * prb..(r + 1) * prb]);
                    }
                }
                assert_eq!(cat.len(), full.rows * rb);
                assert_eq!(cat, full.bytes(), "{name} cols");
            }
        }
    }
    // Head-aligned: Q rows per rank are whole heads, K/V whole KV heads.
    let c = ckpt.config();
    for s in &shards {
        assert_eq!(
            s.get(TensorName::Q(0)).unwrap().rows,
            c.num_heads / tp * c.head_dim
        );
        assert_eq!(
            s.get(TensorName::K(0)).unwrap().rows,
            c.num_kv_heads / tp * c.head_dim
        );
        assert_eq!(
            s.get(TensorName::O(0)).unwrap().cols,
            c.num_heads / tp * c.head_dim
        );
        assert_eq!(
            s.get(TensorName::Down(0)).unwrap().cols,
            c.intermediate_size / tp
        );
    }
    shards
}
