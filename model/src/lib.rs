//! weft's model layer: configs, checkpoint readers, tensor-parallel shard
//! plans, the tokenizer, collectives and the llama forward pass of one rank.

pub mod chat;
pub mod checkpoint;
pub mod comm;
pub mod config;
pub mod gguf;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod llama;
pub mod safetensors_ckpt;
pub mod sampling;
pub mod shard;
pub mod synthetic;
pub mod tokenizer;
