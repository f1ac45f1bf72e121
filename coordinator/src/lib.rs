//! The weft coordinator: opens the checkpoint and plans its tensor-parallel
//! split, gathers the worker group (spawning local workers if asked),
//! streams shards to workers that cannot read the checkpoint, drives every
//! forward step across all ranks, and serves the client API.

pub mod api;
pub mod args;
pub mod auth;
pub mod error;
pub mod group;
pub mod grpc;
pub mod health;
pub mod http;
pub mod kv;
pub mod local;
pub mod members;
pub mod metrics;
pub mod openai;
pub mod registry;
pub mod request;
pub mod scheduler;
pub mod server;
pub mod stop;
pub mod supervise;
pub mod trace;

pub use args::CoordinatorArgs;
pub use error::CoordinatorError;
