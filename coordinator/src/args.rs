//! Command-line configuration of `weft-coordinator`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, ValueEnum};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "weft-coordinator",
    version,
    about = "weft coordinator: serves a model across tensor-parallel workers"
)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub net: NetArgs,
    #[command(flatten)]
    pub local: LocalArgs,
    #[command(flatten)]
    pub sched: SchedulerArgs,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Mutual TLS on the cluster API (to and from the workers).
    #[command(flatten)]
    pub tls: weft_worker::tls::TlsArgs,
    /// The ranks' claims in etcd, watched (the workers' settings).
    #[command(flatten)]
    pub etcd: weft_worker::membership::EtcdArgs,
}

/// How chat output of a reasoning model is split.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningArg {
    /// Split `<think>` ... `</think>` when the chat template mentions `<think>`.
    Auto,
    /// Always split.
    On,
    /// Never split: reasoning stays in the answer text.
    Off,
}

#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Address of the OpenAI-compatible HTTP API.
    #[arg(long, env = "WEFT_HTTP_LISTEN", default_value = "127.0.0.1:8000")]
    pub http_listen: SocketAddr,
    /// File of API keys, one per line; clients send `authorization: Bearer
    /// <key>`. Keys may also come from the WEFT_API_KEY environment
    /// variable (comma-separated), never from the command line. No key:
    /// the APIs are open.
    #[arg(long, env = "WEFT_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Require the API key for /health, /metrics and grpc.health.v1 too.
    #[arg(long, env = "WEFT_AUTH_HEALTH", default_value_t = false)]
    pub auth_health: bool,
    /// Largest `n` (choices per request) the HTTP API accepts.
    #[arg(long, env = "WEFT_MAX_N", default_value_t = 8)]
    pub max_n: u32,
    /// A Jinja chat template file to use instead of the checkpoint's.
    #[arg(long, env = "WEFT_CHAT_TEMPLATE")]
    pub chat_template: Option<PathBuf>,
    /// Split reasoning (`<think>`) from the answer in chat output.
    #[arg(long, env = "WEFT_REASONING", value_enum, default_value_t = ReasoningArg::Auto)]
    pub reasoning: ReasoningArg,
    /// Keys read from the environment by `main` (never parsed from the
    /// command line).
    #[arg(skip)]
    pub api_key_env: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct SchedulerArgs {
    /// Most sequences in one step.
    #[arg(long, env = "WEFT_MAX_NUM_SEQS", default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Most tokens in one step (prefill chunks plus decodes).
    #[arg(long, env = "WEFT_MAX_BATCHED_TOKENS", default_value_t = 512)]
    pub max_batched_tokens: usize,
    /// Most requests waiting for admission; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "WEFT_MAX_WAITING", default_value_t = 256)]
    pub max_waiting: usize,
    /// Tokens per KV-cache block.
    #[arg(long, env = "WEFT_KV_BLOCK_SIZE", default_value_t = 16)]
    pub kv_block_size: usize,
    /// KV-cache blocks (overrides --kv-cache-mib).
    #[arg(long, env = "WEFT_KV_BLOCKS")]
    pub kv_blocks: Option<usize>,
    /// KV-cache memory per worker, in MiB, when --kv-blocks is not given.
    #[arg(long, env = "WEFT_KV_CACHE_MIB", default_value_t = 1024)]
    pub kv_cache_mib: usize,
    /// Disable reuse of cached prompt prefixes.
    #[arg(long, env = "WEFT_NO_PREFIX_CACHING", default_value_t = false)]
    pub no_prefix_caching: bool,
    /// Context length to serve (default and maximum: the model's).
    #[arg(long, env = "WEFT_MAX_MODEL_LEN")]
    pub max_model_len: Option<usize>,
    /// While a failed worker group is being re-formed, up to this many new
    /// requests wait for it; more are refused with UNAVAILABLE.
    #[arg(long, env = "WEFT_RECOVERY_QUEUE", default_value_t = 64)]
    pub recovery_queue: usize,
    /// Seconds requests may wait for a failed group to come back; after
    /// that they get UNAVAILABLE until it serves again.
    #[arg(long, env = "WEFT_RECOVERY_WAIT_S", default_value_t = 30)]
    pub recovery_wait_s: u64,
    /// Seconds every rank gets to answer one step; a rank that stalls
    /// longer fails the group (which is then re-formed).
    #[arg(long, env = "WEFT_STEP_TIMEOUT_S", default_value_t = 60)]
    pub step_timeout_s: u64,
    /// Requests in flight when the worker group fails wait for it to be
    /// re-formed (within the recovery bounds) and resume there, with output
    /// identical to an undisturbed run, instead of ending UNAVAILABLE.
    #[arg(long, env = "WEFT_RESUME_ON_FAILURE", default_value_t = false)]
    pub resume_on_failure: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Checkpoint: a .gguf file, a .safetensors file, or a Hugging Face folder.
    #[arg(
        long,
        env = "WEFT_MODEL",
        default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    )]
    pub model: PathBuf,
    /// Tensor-parallel degree (number of workers).
    #[arg(long, env = "WEFT_TP", default_value_t = 1)]
    pub tp: usize,
    /// How workers obtain their shard.
    #[arg(long, env = "WEFT_SHARD_SOURCE", value_enum, default_value_t = ShardSourceArg::Local)]
    pub shard_source: ShardSourceArg,
    /// Name under which the model is served (default: the file name).
    #[arg(long, env = "WEFT_MODEL_NAME")]
    pub model_name: Option<String>,
    /// Milliseconds a collective may wait for a peer before the step fails.
    #[arg(long, env = "WEFT_COLLECTIVE_TIMEOUT_MS", default_value_t = 30_000)]
    pub collective_timeout_ms: u32,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardSourceArg {
    /// Workers read their slices from the checkpoint path themselves.
    Local,
    /// The coordinator streams each worker its slices over gRPC.
    Stream,
}

#[derive(Args, Debug, Clone)]
pub struct NetArgs {
    /// Address of the client API (gRPC weft.v1).
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Address of the internal cluster API that workers call.
    #[arg(long, env = "WEFT_CLUSTER_LISTEN", default_value = "127.0.0.1:50052")]
    pub cluster_listen: SocketAddr,
    /// With --etcd-endpoints: the host (IP or DNS name) workers reach the cluster API
    /// at, announced in etcd with the cluster port; default the --cluster-listen IP
    /// (required when that is 0.0.0.0 or [::]).
    #[arg(long, env = "WEFT_CLUSTER_ADVERTISE")]
    pub cluster_advertise: Option<String>,
    /// Seconds to wait for every rank to register.
    #[arg(long, env = "WEFT_REGISTER_TIMEOUT", default_value_t = 120)]
    pub register_timeout_s: u64,
    /// On SIGTERM, seconds the requests in flight get to finish (no new
    /// one is admitted meanwhile); those still running then end with
    /// UNAVAILABLE, so that their clients retry elsewhere.
    #[arg(long, env = "WEFT_DRAIN_GRACE_S", default_value_t = 30)]
    pub drain_grace_s: u64,
}

#[derive(Args, Debug, Clone)]
pub struct LocalArgs {
    /// Start the workers as local child processes.
    #[arg(long, env = "WEFT_LOCAL_WORKERS", default_value_t = false)]
    pub local_workers: bool,
    /// The weft-worker executable (default: beside this executable).
    #[arg(long, env = "WEFT_WORKER_BIN")]
    pub worker_bin: Option<PathBuf>,
    /// Compute threads per local worker (0 = cores / tp).
    #[arg(long, env = "WEFT_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
    /// Device of the local workers: `cpu`, or `cuda:N` (rank r uses GPU N + r;
    /// the workers must be built with `--features cuda`).
    #[arg(long, env = "WEFT_WORKER_DEVICE")]
    pub worker_device: Option<crate::local::WorkerDevice>,
    /// Pass --debug-logits to local workers (tests only).
    #[arg(long, hide = true, default_value_t = false)]
    pub worker_debug_logits: bool,
}
