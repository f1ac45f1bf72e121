//! Startup and shutdown of the coordinator: checkpoint, plan, group,
//! client API.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use weft_model::chat::ChatTemplate;
use weft_model::checkpoint::{Checkpoint, Format};
use weft_model::shard::ShardPlan;
use weft_model::tokenizer::{GgufTokenizerData, Tokenizer};
use weft_proto::cluster::v1 as pb;
use weft_worker::convert::config_to_proto;

use crate::api::{collect, Api, ApiConfig, RequestCtx, ServedModel};
use crate::args::{CoordinatorArgs, ReasoningArg, SchedulerArgs, ShardSourceArg};
use crate::auth::ApiKeys;
use crate::group::WorkerGroup;
use crate::grpc::serve_grpc;
use crate::health::Health;
use crate::local::{default_threads, default_worker_bin, LocalWorkerConfig, LocalWorkers};
use crate::registry::{Registry, RegistryService};
use crate::request::RequestLimits;
use crate::scheduler::{SchedulerConfig, SchedulerDeps, SchedulerHandle};
use crate::supervise::Supervisor;
use crate::CoordinatorError;
use weft_model::config::ModelConfig;
use weft_worker::tls::ClusterTls;

/// Already-bound listeners (tests bind port 0).
pub struct Listeners {
    /// gRPC `weft.v1`.
    pub client: TcpListener,
    /// The cluster API that workers call.
    pub cluster: TcpListener,
    /// The OpenAI-compatible HTTP API.
    pub http: TcpListener,
}

/// What a caller learns once the model serves (health SERVING).
pub struct Ready {
    pub addr: std::net::SocketAddr,
    pub http_addr: std::net::SocketAddr,
    pub scheduler: SchedulerHandle,
    pub api: Arc<Api>,
}

/// Called once the model serves.
pub type OnReady = Box<dyn FnOnce(Ready) + Send>;

/// How long the client APIs get to flush their last responses once the
/// scheduler has drained.
const API_STOP_GRACE: Duration = Duration::from_secs(5);

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
        recovery_queue: s.recovery_queue,
        recovery_wait: Duration::from_secs(s.recovery_wait_s),
        step_timeout: Duration::from_secs(s.step_timeout_s.max(1)),
        resume_on_failure: s.resume_on_failure,
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

/// A template given with --chat-template; BOS and EOS are the tokenizer's.
fn template_from_file(
    path: &std::path::Path,
    tokenizer: &Tokenizer,
) -> Result<ChatTemplate, CoordinatorError> {
    let source = std::fs::read_to_string(path).map_err(|e| {
        CoordinatorError::InvalidArgument(format!("chat template {}: {e}", path.display()))
    })?;
    let token = |id: Option<u32>| {
        id.and_then(|i| tokenizer.id_to_token(i))
            .unwrap_or_default()
    };
    ChatTemplate::new(
        source,
        token(tokenizer.bos_token_id()),
        token(tokenizer.eos_token_id()),
    )
    .map_err(|e| {
        CoordinatorError::InvalidArgument(format!("chat template {}: {e}", path.display()))
    })
}

/// What the startup task learns from the checkpoint.
struct Opened {
    ckpt: Arc<Checkpoint>,
    plan: Arc<ShardPlan>,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
}

fn open_checkpoint(args: &CoordinatorArgs) -> Result<Opened, CoordinatorError> {
    let ckpt = Checkpoint::open(&args.model.model)?;
    let plan = ShardPlan::for_checkpoint(&ckpt, args.model.tp)?;
    let tokenizer = load_tokenizer(&ckpt)?;
    let template = match &args.api.chat_template {
        Some(path) => Some(template_from_file(path, &tokenizer)?),
        None => ChatTemplate::for_checkpoint(&ckpt)
            .map_err(|e| CoordinatorError::InvalidArgument(format!("chat template: {e}")))?,
    };
    Ok(Opened {
        ckpt: Arc::new(ckpt),
        plan: Arc::new(plan),
        tokenizer,
        template,
    })
}

fn served_model(args: &CoordinatorArgs, o: Opened, sched: &SchedulerConfig) -> ServedModel {
    let reasoning = match args.api.reasoning {
        ReasoningArg::Auto => o.template.as_ref().is_some_and(|t| t.supports_reasoning()),
        ReasoningArg::On => true,
        ReasoningArg::Off => false,
    };
    ServedModel {
        name: served_name(args, &o.ckpt),
        config: o.ckpt.config().clone(),
        tokenizer: Arc::new(o.tokenizer),
        template: o.template,
        reasoning,
        limits: RequestLimits::new(
            sched.max_model_len,
            sched.kv_num_blocks * sched.kv_block_size,
        ),
        tensor_parallel: args.model.tp,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    }
}

/// Runs the coordinator until `shutdown` is cancelled (also during
/// startup). The client APIs answer from the start, NOT_SERVING until
/// every rank has loaded its shard and a canary step has run.
pub async fn run(
    args: CoordinatorArgs,
    listeners: Listeners,
    shutdown: CancellationToken,
    on_ready: OnReady,
) -> Result<(), CoordinatorError> {
    let keys = ApiKeys::load(
        args.api.api_key_file.as_deref(),
        args.api.api_key_env.as_deref(),
    )
    .map_err(|e| CoordinatorError::InvalidArgument(e.to_string()))?;
    let tp = args.model.tp;
    let startup_args = args.clone();
    let opened = tokio::task::spawn_blocking(move || open_checkpoint(&startup_args))
        .await
        .map_err(|e| CoordinatorError::Unavailable(format!("startup task failed: {e}")))??;
    let (ckpt, plan) = (opened.ckpt.clone(), opened.plan.clone());
    let config = ckpt.config().clone();
    tracing::info!(
        layers = config.num_layers,
        hidden = config.hidden_size,
        tp,
        chat_template = opened.template.is_some(),
        api_keys = keys.len(),
        "checkpoint opened"
    );
    let sched = scheduler_config(&args, &config);
    let health = Health::new("loading the model");
    let api = Api::new(
        served_model(&args, opened, &sched),
        ApiConfig {
            keys,
            auth_health: args.api.auth_health,
            max_n: args.api.max_n.max(1),
        },
        health.clone(),
    );
    let serving = CancellationToken::new();
    crate::members::spawn_watch(&args.etcd, health.clone(), serving.clone())?;
    let addr = listeners.client.local_addr()?;
    let http_addr = listeners.http.local_addr()?;
    let grpc_task = tokio::spawn(serve_grpc(api.clone(), listeners.client, serving.clone()));
    let http_task = tokio::spawn(crate::http::serve(
        api.clone(),
        listeners.http,
        serving.clone(),
    ));
    tracing::info!(%addr, %http_addr, "client APIs listening (not serving until loaded)");

    let registry = Registry::new(tp, ckpt.clone(), plan);
    let cluster_addr = listeners.cluster.local_addr()?;
    let tls = ClusterTls::load(&args.tls)?;
    let mut cluster_builder = tonic::transport::Server::builder();
    if let Some(t) = &tls {
        cluster_builder = cluster_builder
            .tls_config(t.server())
            .map_err(|e| CoordinatorError::InvalidArgument(format!("cluster TLS: {e}")))?;
    }
    let cluster_server = cluster_builder
        .add_service(pb::coordinator_server::CoordinatorServer::new(
            RegistryService(registry.clone()),
        ))
        .serve_with_incoming(TcpListenerStream::new(listeners.cluster));
    let cluster_task = tokio::spawn(cluster_server);
    let coordinator_url = weft_worker::tls::url(&cluster_addr.to_string(), tls.as_ref());
    let _announced = crate::members::announce(crate::members::Announce {
        etcd: &args.etcd,
        cluster_addr,
        advertise: args.net.cluster_advertise.as_deref(),
        tls: tls.as_ref(),
        instance: registry.instance(),
    })?;
    let mut local = spawn_local_workers(&args, &coordinator_url, tls.as_ref())?;

    tracing::info!(
        kv_blocks = sched.kv_num_blocks,
        kv_block_size = sched.kv_block_size,
        max_num_seqs = sched.max_num_seqs,
        max_batched_tokens = sched.max_batched_tokens,
        "scheduler limits"
    );
    let ctx = GroupCtx {
        args: &args,
        ckpt: &ckpt,
        registry: &registry,
        coordinator_url,
        sched: &sched,
        tls: tls.as_ref(),
    };
    let startup = async {
        let (group, kv_blocks) = start_group(&ctx, local.as_mut()).await?;
        // The blocks every rank holds (GPU ranks may size their pool).
        let sched = SchedulerConfig {
            kv_num_blocks: kv_blocks,
            ..sched.clone()
        };
        api.set_kv_capacity(kv_blocks * sched.kv_block_size);
        tracing::info!(kv_blocks, "K/V pool of the group");
        let scheduler = SchedulerHandle::spawn(
            sched,
            SchedulerDeps {
                group: group.clone(),
                tokenizer: api.model.tokenizer.clone(),
                metrics: api.metrics.clone(),
                health: health.clone(),
            },
        );
        api.attach(scheduler.clone());
        canary(&api).await?;
        Ok::<_, CoordinatorError>((group, scheduler))
    };
    let started = tokio::select! {
        started = startup => Some(started),
        _ = shutdown.cancelled() => None,
    };
    let result = match started {
        Some(Ok((group, scheduler))) => {
            health.set_serving();
            tracing::info!(%addr, %http_addr, "serving");
            on_ready(Ready {
                addr,
                http_addr,
                scheduler: scheduler.clone(),
                api: api.clone(),
            });
            let supervisor = Supervisor {
                ctx: &ctx,
                local: local.as_mut(),
                api: &api,
                health: &health,
                scheduler: &scheduler,
            };
            Ok(Some((supervisor.run(group, &shutdown).await, scheduler)))
        }
        Some(Err(e)) => Err(e),
        None => {
            tracing::info!("shutdown requested during startup");
            Ok(None)
        }
    };
    // Drain: NOT_SERVING first, admit nothing more, let what is in flight
    // finish within the grace period (the rest ends UNAVAILABLE), then stop
    // the APIs once their streams are flushed.
    health.set_not_serving("the server is shutting down");
    if let Ok(Some((_, scheduler))) = &result {
        let grace = Duration::from_secs(args.net.drain_grace_s);
        tracing::info!(
            ?grace,
            "draining: no new requests; in-flight ones may finish"
        );
        let ended = scheduler.drain(grace).await;
        if ended > 0 {
            tracing::warn!(
                ended,
                "requests still running after {grace:?} ended UNAVAILABLE"
            );
        }
    }
    serving.cancel();
    for task in [grpc_task, http_task] {
        let abort = task.abort_handle();
        match tokio::time::timeout(API_STOP_GRACE, task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "client API ended with an error"),
            Err(_) => {
                tracing::warn!("client streams did not close within {API_STOP_GRACE:?}");
                abort.abort();
            }
            _ => {}
        }
    }
    if let Ok(Some((group, _))) = &result {
        tracing::info!("shutting down the worker group");
        group.shutdown().await;
    }
    cluster_task.abort();
    if let Some(l) = local {
        l.stop(Duration::from_secs(5)).await;
    }
    result.map(|_| ())
}

/// One greedy token through the whole group before health says SERVING.
pub(crate) async fn canary(api: &Api) -> Result<(), CoordinatorError> {
    let first = api
        .model
        .config
        .bos_token_id
        .or_else(|| api.model.tokenizer.bos_token_id())
        .unwrap_or(0);
    let req = weft_proto::v1::GenerateRequest {
        prompt: Some(weft_proto::v1::generate_request::Prompt::TokenIds(
            weft_proto::v1::TokenIds { ids: vec![first] },
        )),
        max_tokens: 1,
        ignore_eos: true,
        ..Default::default()
    };
    let rx = api
        .generate(
            req,
            &RequestCtx {
                internal: true,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| CoordinatorError::Unavailable(format!("canary step: {e}")))?;
    let reply = collect(rx)
        .await
        .map_err(|e| CoordinatorError::Unavailable(format!("canary step: {e}")))?;
    tracing::info!(tokens = reply.tokens.len(), "canary step completed");
    Ok(())
}

fn spawn_local_workers(
    args: &CoordinatorArgs,
    coordinator_url: &str,
    tls: Option<&ClusterTls>,
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
        device: args.local.worker_device,
        tls: tls.map(|t| t.args.clone()),
        etcd: args.etcd.clone(),
    })
    .map(Some)
}

/// What forming a worker group takes.
pub(crate) struct GroupCtx<'a> {
    pub args: &'a CoordinatorArgs,
    pub ckpt: &'a Checkpoint,
    pub registry: &'a Registry,
    /// The cluster API's URL, for workers that stream their shard.
    pub coordinator_url: String,
    pub sched: &'a SchedulerConfig,
    /// Mutual TLS to the workers.
    pub tls: Option<&'a ClusterTls>,
}

/// Waits for every rank to register, then loads the group.
pub(crate) async fn start_group(
    ctx: &GroupCtx<'_>,
    local: Option<&mut LocalWorkers>,
) -> Result<(WorkerGroup, usize), CoordinatorError> {
    let GroupCtx {
        args,
        ckpt,
        registry,
        sched,
        ..
    } = *ctx;
    let coordinator_url = ctx.coordinator_url.clone();
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

    let group = WorkerGroup::connect(&members, ctx.tls).await?;
    // A GPU group of several ranks forms its NCCL communicator from an id
    // that rank 0 makes and this coordinator hands to every rank.
    let all_cuda = members.iter().all(|m| m.cuda);
    let nccl_id = if members.len() > 1 && members.iter().any(|m| m.cuda) {
        if !members.iter().all(|m| m.cuda) {
            return Err(CoordinatorError::InvalidArgument(
                "a tensor-parallel group cannot mix CPU and GPU ranks".into(),
            ));
        }
        group.new_nccl_id().await?
    } else {
        Vec::new()
    };
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
        // GPU ranks size their pool from device memory unless told.
        kv_num_blocks: if all_cuda && args.sched.kv_blocks.is_none() {
            0
        } else {
            sched.kv_num_blocks as u32
        },
        nccl_id,
        ..Default::default()
    };
    let mut blocks = usize::MAX;
    for l in group.load(&load).await? {
        tracing::info!(
            rank = l.rank,
            bytes = l.shard_bytes,
            digest = format!("{:016x}", l.shard_digest),
            kv_blocks = l.kv_num_blocks,
            "rank loaded"
        );
        // Older workers do not report; they hold what was asked.
        let held = match l.kv_num_blocks {
            0 => sched.kv_num_blocks,
            n => n as usize,
        };
        blocks = blocks.min(held);
    }
    if blocks == 0 || blocks == usize::MAX {
        return Err(CoordinatorError::Unavailable(
            "the group holds no K/V blocks".into(),
        ));
    }
    Ok((group, blocks))
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
