//! Startup and shutdown of the coordinator: checkpoint, plan, group,
//! client API.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use weft_model::checkpoint::{Checkpoint, Format};
use weft_model::shard::ShardPlan;
use weft_model::tokenizer::{GgufTokenizerData, Tokenizer};
use weft_proto::cluster::v1 as pb;
use weft_proto::v1::generation_server::GenerationServer;
use weft_worker::convert::config_to_proto;

use crate::args::{CoordinatorArgs, SchedulerArgs, ShardSourceArg};
use crate::generate::{GenerationService, ServedModel};
use crate::group::WorkerGroup;
use crate::local::{default_threads, default_worker_bin, LocalWorkerConfig, LocalWorkers};
use crate::registry::{Registry, RegistryService};
use crate::request::RequestLimits;
use crate::scheduler::{SchedulerConfig, SchedulerHandle};
use crate::CoordinatorError;
use weft_model::config::ModelConfig;

/// Already-bound listeners (tests bind port 0).
pub struct Listeners {
    pub client: TcpListener,
    pub cluster: TcpListener,
}

/// What a caller learns once the client API serves.
pub struct Ready {
    pub addr: std::net::SocketAddr,
    pub scheduler: SchedulerHandle,
}

/// Called once the client API serves.
pub type OnReady = Box<dyn FnOnce(Ready) + Send>;

/// KV-cache blocks per worker: --kv-blocks, or the memory budget divided by
/// the size of one block on one rank (keys and values, every layer, this
/// rank's KV heads, f32).
pub fn kv_blocks(args: &SchedulerArgs, cfg: &ModelConfig, tp: usize) -> usize {
    if let Some(n) = args.kv_blocks {
        return n;
    }
    let per_block =
        2 * cfg.num_layers * args.kv_block_size * (cfg.num_kv_heads / tp.max(1)) * cfg.head_dim * 4;
    (args.kv_cache_mib << 20) / per_block.max(1)
}

fn scheduler_config(args: &CoordinatorArgs, cfg: &ModelConfig) -> SchedulerConfig {
    let s = &args.sched;
    SchedulerConfig {
        max_num_seqs: s.max_num_seqs.max(1),
        max_batched_tokens: s.max_batched_tokens.max(1),
        max_waiting: s.max_waiting,
        kv_block_size: s.kv_block_size.max(1),
        kv_num_blocks: kv_blocks(s, cfg, args.model.tp),
        prefix_caching: !s.no_prefix_caching,
        max_model_len: s.max_model_len.map_or(cfg.max_position_embeddings, |m| {
            m.min(cfg.max_position_embeddings)
        }),
        eos_token_ids: cfg.eos_token_ids.clone(),
    }
}

fn load_tokenizer(ckpt: &Checkpoint) -> Result<Tokenizer, CoordinatorError> {
    if let Some(path) = ckpt.tokenizer_json() {
        return Ok(Tokenizer::from_hf_file(&path)?);
    }
    match ckpt.gguf() {
        Some(g) => Ok(Tokenizer::from_gguf_data(GgufTokenizerData::from_gguf(g)?)?),
        None => Err(CoordinatorError::InvalidArgument(format!(
            "no tokenizer.json beside {}",
            ckpt.path().display()
        ))),
    }
}

/// Runs the coordinator until `shutdown` is cancelled (also during startup).
pub async fn run(
    args: CoordinatorArgs,
    listeners: Listeners,
    shutdown: CancellationToken,
    on_ready: OnReady,
) -> Result<(), CoordinatorError> {
    let path = args.model.model.clone();
    let tp = args.model.tp;
    let (ckpt, plan, tokenizer) =
        tokio::task::spawn_blocking(move || -> Result<_, CoordinatorError> {
            let ckpt = Checkpoint::open(&path)?;
            let plan = ShardPlan::for_checkpoint(&ckpt, tp)?;
            let tokenizer = load_tokenizer(&ckpt)?;
            Ok((Arc::new(ckpt), Arc::new(plan), tokenizer))
        })
        .await
        .map_err(|e| CoordinatorError::Unavailable(format!("startup task failed: {e}")))??;
    let config = ckpt.config().clone();
    tracing::info!(
        layers = config.num_layers,
        hidden = config.hidden_size,
        tp,
        "checkpoint opened"
    );

    let registry = Registry::new(tp, ckpt.clone(), plan);
    let cluster_addr = listeners.cluster.local_addr()?;
    let cluster_server = tonic::transport::Server::builder()
        .add_service(pb::coordinator_server::CoordinatorServer::new(
            RegistryService(registry.clone()),
        ))
        .serve_with_incoming(TcpListenerStream::new(listeners.cluster));
    let cluster_task = tokio::spawn(cluster_server);
    let coordinator_url = format!("http://{cluster_addr}");
    let mut local = spawn_local_workers(&args, &coordinator_url)?;

    let sched = scheduler_config(&args, &config);
    tracing::info!(
        kv_blocks = sched.kv_num_blocks,
        kv_block_size = sched.kv_block_size,
        max_num_seqs = sched.max_num_seqs,
        max_batched_tokens = sched.max_batched_tokens,
        "scheduler limits"
    );
    let startup = start_group(
        &args,
        &ckpt,
        &registry,
        coordinator_url,
        local.as_mut(),
        &sched,
    );
    let result = tokio::select! {
        group = startup => match group {
            Ok(group) => {
                let tokenizer = Arc::new(tokenizer);
                let model = Arc::new(ServedModel {
                    name: served_name(&args, &ckpt),
                    limits: RequestLimits::new(sched.max_model_len, sched.kv_num_blocks * sched.kv_block_size),
                    config,
                    scheduler: SchedulerHandle::spawn(sched, group.clone(), tokenizer.clone()),
                    tokenizer,
                });
                serve_clients(model, group, listeners.client, shutdown, on_ready).await
            }
            Err(e) => Err(e),
        },
        _ = shutdown.cancelled() => {
            tracing::info!("shutdown requested during startup");
            Ok(())
        }
    };
    cluster_task.abort();
    if let Some(l) = local {
        l.stop(Duration::from_secs(5)).await;
    }
    result
}

fn spawn_local_workers(
    args: &CoordinatorArgs,
    coordinator_url: &str,
) -> Result<Option<LocalWorkers>, CoordinatorError> {
    if !args.local.local_workers {
        return Ok(None);
    }
    let bin = match &args.local.worker_bin {
        Some(b) => b.clone(),
        None => default_worker_bin()?,
    };
    let threads = match args.local.worker_threads {
        0 => default_threads(args.model.tp),
        n => n,
    };
    LocalWorkers::spawn(&LocalWorkerConfig {
        bin,
        world_size: args.model.tp,
        coordinator_url: coordinator_url.to_string(),
        threads,
        debug_logits: args.local.worker_debug_logits,
    })
    .map(Some)
}

/// Waits for every rank to register, then loads the group.
async fn start_group(
    args: &CoordinatorArgs,
    ckpt: &Checkpoint,
    registry: &Registry,
    coordinator_url: String,
    local: Option<&mut LocalWorkers>,
    sched: &SchedulerConfig,
) -> Result<WorkerGroup, CoordinatorError> {
    let timeout = Duration::from_secs(args.net.register_timeout_s);
    let members = match local {
        Some(l) => tokio::select! {
            m = registry.wait_complete(timeout) => m,
            (rank, status) = l.any_exited() => {
                return Err(CoordinatorError::Spawn(format!("local worker {rank} exited during startup: {status:?}")));
            }
        },
        None => registry.wait_complete(timeout).await,
    }
    .ok_or_else(|| CoordinatorError::Unavailable(format!("not every rank registered within {timeout:?}")))?;

    let group = WorkerGroup::connect(&members).await?;
    let config = ckpt.config();
    let load = pb::LoadRequest {
        world_size: args.model.tp as u32,
        peer_comm_addrs: members.iter().map(|m| m.comm_addr.clone()).collect(),
        config: Some(config_to_proto(config)),
        source: match args.model.shard_source {
            ShardSourceArg::Local => pb::ShardSource::LocalPath,
            ShardSourceArg::Stream => pb::ShardSource::Stream,
        } as i32,
        checkpoint_path: std::path::absolute(ckpt.path())?.display().to_string(),
        format: match ckpt.format() {
            Format::Gguf => pb::CheckpointFormat::Gguf,
            Format::Safetensors => pb::CheckpointFormat::Safetensors,
        } as i32,
        coordinator_addr: coordinator_url,
        eos_token_ids: config.eos_token_ids.clone(),
        session: rand::random(),
        collective_timeout_ms: args.model.collective_timeout_ms,
        kv_block_size: sched.kv_block_size as u32,
        kv_num_blocks: sched.kv_num_blocks as u32,
        ..Default::default()
    };
    for l in group.load(&load).await? {
        tracing::info!(
            rank = l.rank,
            bytes = l.shard_bytes,
            digest = format!("{:016x}", l.shard_digest),
            "rank loaded"
        );
    }
    Ok(group)
}

async fn serve_clients(
    model: Arc<ServedModel>,
    group: WorkerGroup,
    client: TcpListener,
    shutdown: CancellationToken,
    on_ready: OnReady,
) -> Result<(), CoordinatorError> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(weft_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| CoordinatorError::Unavailable(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(weft_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| CoordinatorError::Unavailable(format!("reflection: {e}")))?;
    let addr = client.local_addr()?;
    let server = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            undecodable_is_invalid_argument,
        ))
        .add_service(GenerationServer::new(GenerationService(model.clone())))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(TcpListenerStream::new(client), shutdown.cancelled_owned());
    tracing::info!(%addr, "serving the client API");
    on_ready(Ready {
        addr,
        scheduler: model.scheduler.clone(),
    });
    server.await?;
    tracing::info!("shutting down the worker group");
    group.shutdown().await;
    Ok(())
}

/// tonic answers a request message that does not decode (for example a
/// string field holding invalid UTF-8) with INTERNAL; for a client API that
/// is bad input, so it becomes INVALID_ARGUMENT.
fn undecodable_is_invalid_argument<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let h = resp.headers_mut();
    let decode_error = h.get("grpc-status").is_some_and(|v| v == "13")
        && h.get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| {
                m.starts_with("failed%20to%20decode") || m.starts_with("failed to decode")
            });
    if decode_error {
        h.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
    resp
}

fn served_name(args: &CoordinatorArgs, ckpt: &Checkpoint) -> String {
    args.model
        .model_name
        .clone()
        .unwrap_or_else(|| model_name(ckpt))
}

fn model_name(ckpt: &Checkpoint) -> String {
    let p = ckpt.path();
    let stem = if p.is_dir() {
        p.file_name()
    } else {
        p.file_stem()
    };
    stem.map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}
