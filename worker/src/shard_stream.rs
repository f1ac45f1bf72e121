//! The shard stream of `Coordinator.FetchShard`: both ends of it live here
//! so the protocol is defined once. The coordinator produces the chunks of
//! exactly one rank's slices; the worker checks every chunk's CRC-32, every
//! tensor's CRC-32 and the digest of the whole shard.

use weft_model::checkpoint::{Checkpoint, TensorName};
use weft_model::shard::{read_slice, Shard, ShardDigest, ShardPlan, ShardTensor, Split};
use weft_proto::cluster::v1 as pb;

use crate::convert::{dtype_from_proto, dtype_to_proto};
use crate::WorkerError;

/// Bytes per data chunk (well under gRPC's 4 MiB default message limit).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Total bytes of `rank`'s slices, for progress reports.
pub fn shard_bytes(ckpt: &Checkpoint, plan: &ShardPlan, rank: usize) -> Result<u64, WorkerError> {
    let mut total = 0u64;
    for spec in plan.slices(rank) {
        let t = ckpt.tensor(spec.name)?;
        let (rows, cols) = match &spec.split {
            Split::Replicated => (t.rows, t.cols),
            Split::Rows(r) => (r.len(), t.cols),
            Split::Cols(c) => (t.rows, c.len()),
        };
        let row_bytes = t
            .dtype
            .row_bytes(cols)
            .map_err(|e| WorkerError::InvalidArgument(e.to_string()))?;
        total += (rows * row_bytes) as u64;
    }
    Ok(total)
}

/// Produces the stream of `rank`'s shard, calling `send` for each chunk and
/// `progress(sent_bytes)` after each tensor. Stops early (Ok) when `send`
/// returns false (the receiver went away).
pub fn produce_shard(
    ckpt: &Checkpoint,
    plan: &ShardPlan,
    rank: usize,
    mut send: impl FnMut(pb::ShardChunk) -> bool,
    mut progress: impl FnMut(u64),
) -> Result<(), WorkerError> {
    let mut digest = ShardDigest::new();
    let (mut count, mut total) = (0u32, 0u64);
    for spec in plan.slices(rank) {
        let t = read_slice(ckpt, &spec)?;
        digest.update(&t);
        if !send_tensor(&t, &mut send) {
            return Ok(());
        }
        count += 1;
        total += t.data.len() as u64;
        progress(total);
    }
    let end = pb::ShardEnd {
        tensor_count: count,
        total_bytes: total,
        digest: digest.finish(),
    };
    send(chunk(pb::shard_chunk::Item::End(end)));
    Ok(())
}

fn chunk(item: pb::shard_chunk::Item) -> pb::ShardChunk {
    pb::ShardChunk { item: Some(item) }
}

fn send_tensor(t: &ShardTensor, send: &mut impl FnMut(pb::ShardChunk) -> bool) -> bool {
    let header = pb::TensorHeader {
        name: t.name.canonical(),
        dtype: dtype_to_proto(t.dtype) as i32,
        rows: t.rows as u64,
        cols: t.cols as u64,
        byte_len: t.data.len() as u64,
        crc32: crc32fast::hash(&t.data),
    };
    if !send(chunk(pb::shard_chunk::Item::Header(header))) {
        return false;
    }
    for (i, piece) in t.data.chunks(CHUNK_BYTES).enumerate() {
        let data = pb::TensorData {
            offset: (i * CHUNK_BYTES) as u64,
            data: piece.to_vec(),
            crc32: crc32fast::hash(piece),
        };
        if !send(chunk(pb::shard_chunk::Item::Data(data))) {
            return false;
        }
    }
    true
}

/// Reassembles and verifies a shard from its chunks.
pub struct ShardReceiver {
    rank: usize,
    world_size: usize,
    tensors: Vec<ShardTensor>,
    current: Option<(pb::TensorHeader, ShardTensor)>,
    digest: ShardDigest,
    done: bool,
}

fn corrupt(msg: impl Into<String>) -> WorkerError {
    WorkerError::CorruptStream(msg.into())
}

impl ShardReceiver {
    pub fn new(rank: usize, world_size: usize) -> Self {
        ShardReceiver {
            rank,
            world_size,
            tensors: Vec::new(),
            current: None,
            digest: ShardDigest::new(),
            done: false,
        }
    }

    pub fn push(&mut self, c: pb::ShardChunk) -> Result<(), WorkerError> {
        if self.done {
            return Err(corrupt("data after the end of the shard"));
        }
        match c.item {
            Some(pb::shard_chunk::Item::Header(h)) => self.start_tensor(h),
            Some(pb::shard_chunk::Item::Data(d)) => self.add_data(d),
            Some(pb::shard_chunk::Item::End(e)) => self.end(e),
            None => Err(corrupt("empty chunk")),
        }
    }

    fn start_tensor(&mut self, h: pb::TensorHeader) -> Result<(), WorkerError> {
        self.finish_tensor()?;
        let name = TensorName::parse(&h.name)
            .ok_or_else(|| corrupt(format!("unknown tensor name {:?}", h.name)))?;
        let dtype = dtype_from_proto(h.dtype)?;
        let (rows, cols) = (h.rows as usize, h.cols as usize);
        let want = dtype
            .row_bytes(cols)
            .ok()
            .and_then(|rb| rb.checked_mul(rows))
            .ok_or_else(|| {
                corrupt(format!(
                    "tensor {} has an impossible shape {rows}x{cols}",
                    h.name
                ))
            })?;
        if want as u64 != h.byte_len {
            return Err(corrupt(format!(
                "tensor {} announces {} bytes, its shape needs {want}",
                h.name, h.byte_len
            )));
        }
        let t = ShardTensor {
            name,
            dtype,
            rows,
            cols,
            data: Vec::with_capacity(want),
        };
        self.current = Some((h, t));
        Ok(())
    }

    fn add_data(&mut self, d: pb::TensorData) -> Result<(), WorkerError> {
        let (h, t) = self
            .current
            .as_mut()
            .ok_or_else(|| corrupt("tensor data before any header"))?;
        if d.offset != t.data.len() as u64 {
            return Err(corrupt(format!(
                "tensor {}: chunk at offset {} but {} bytes received",
                h.name,
                d.offset,
                t.data.len()
            )));
        }
        if crc32fast::hash(&d.data) != d.crc32 {
            return Err(corrupt(format!(
                "tensor {}: chunk at offset {} fails its CRC-32",
                h.name, d.offset
            )));
        }
        if t.data.len() as u64 + d.data.len() as u64 > h.byte_len {
            return Err(corrupt(format!(
                "tensor {}: more bytes than announced",
                h.name
            )));
        }
        t.data.extend_from_slice(&d.data);
        Ok(())
    }

    fn finish_tensor(&mut self) -> Result<(), WorkerError> {
        let Some((h, t)) = self.current.take() else {
            return Ok(());
        };
        if t.data.len() as u64 != h.byte_len {
            return Err(corrupt(format!(
                "tensor {}: {} of {} bytes received",
                h.name,
                t.data.len(),
                h.byte_len
            )));
        }
        if crc32fast::hash(&t.data) != h.crc32 {
            return Err(corrupt(format!("tensor {} fails its CRC-32", h.name)));
        }
        self.digest.update(&t);
        self.tensors.push(t);
        Ok(())
    }

    fn end(&mut self, e: pb::ShardEnd) -> Result<(), WorkerError> {
        self.finish_tensor()?;
        let total: u64 = self.tensors.iter().map(|t| t.data.len() as u64).sum();
        if e.tensor_count as usize != self.tensors.len() || e.total_bytes != total {
            return Err(corrupt(format!(
                "shard end announces {} tensors / {} bytes, received {} / {total}",
                e.tensor_count,
                e.total_bytes,
                self.tensors.len()
            )));
        }
        if e.digest != self.digest.finish() {
            return Err(corrupt("shard digest mismatch"));
        }
        self.done = true;
        Ok(())
    }

    /// The verified shard; an error unless the end marker arrived.
    pub fn finish(self) -> Result<Shard, WorkerError> {
        if !self.done {
            return Err(corrupt("the stream ended before the shard was complete"));
        }
        Ok(Shard {
            rank: self.rank,
            world_size: self.world_size,
            tensors: self.tensors,
        })
    }
}

/// Fetches `rank`'s shard from the coordinator.
pub async fn fetch_shard(
    coordinator: &str,
    rank: usize,
    world_size: usize,
    tls: Option<&crate::tls::ClusterTls>,
) -> Result<Shard, WorkerError> {
    use pb::coordinator_client::CoordinatorClient;
    let channel = crate::tls::connect(coordinator, tls).await?;
    let mut client = CoordinatorClient::new(channel);
    let mut stream = client
        .fetch_shard(pb::FetchShardRequest {
            rank: rank as u32,
            world_size: world_size as u32,
        })
        .await?
        .into_inner();
    let mut rx = ShardReceiver::new(rank, world_size);
    while let Some(c) = stream.message().await? {
        rx.push(c)?;
    }
    rx.finish()
}
