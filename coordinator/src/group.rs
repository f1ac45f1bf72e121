//! The worker group: every step is fanned out to every rank, every rank
//! must answer, and the sampled tokens of all ranks must agree.

use futures::future::join_all;
use tonic::transport::Channel;
use weft_proto::cluster::v1 as pb;
use weft_proto::cluster::v1::worker_client::WorkerClient;

use weft_worker::tls::{self, ClusterTls};

use crate::registry::Member;
use crate::CoordinatorError;

#[derive(Clone)]
pub struct WorkerGroup {
    clients: Vec<WorkerClient<Channel>>,
    /// Who the ranks are (their processes' instances included).
    members: Vec<Member>,
}

impl WorkerGroup {
    /// Connects to every member, indexed by rank (over mutual TLS with
    /// `tls`).
    pub async fn connect(
        members: &[Member],
        tls: Option<&ClusterTls>,
    ) -> Result<Self, CoordinatorError> {
        let mut clients = Vec::with_capacity(members.len());
        for m in members {
            let ch = tls::connect(&tls::url(&m.worker_addr, tls), tls).await?;
            clients.push(WorkerClient::new(ch).max_decoding_message_size(64 << 20));
        }
        Ok(WorkerGroup {
            clients,
            members: members.to_vec(),
        })
    }

    pub fn world_size(&self) -> usize {
        self.clients.len()
    }

    /// Loads every rank concurrently (the ranks form their collective group
    /// during Load, so they must all be asked at once).
    pub async fn load(
        &self,
        template: &pb::LoadRequest,
    ) -> Result<Vec<pb::LoadResponse>, CoordinatorError> {
        let calls = self.clients.iter().enumerate().map(|(rank, c)| {
            let mut c = c.clone();
            let mut req = template.clone();
            req.rank = rank as u32;
            async move { c.load(req).await.map(|r| r.into_inner()) }
        });
        let results = join_all(calls).await;
        results
            .into_iter()
            .enumerate()
            .map(|(rank, r)| r.map_err(|status| CoordinatorError::Worker { rank, status }))
            .collect()
    }

    /// A fresh NCCL unique id from rank 0, for a GPU group's formation.
    pub async fn new_nccl_id(&self) -> Result<Vec<u8>, CoordinatorError> {
        let mut c = self
            .clients
            .first()
            .cloned()
            .ok_or_else(|| CoordinatorError::Unavailable("the group has no ranks".into()))?;
        let id = c
            .new_nccl_id(pb::NcclIdRequest {})
            .await
            .map_err(|status| CoordinatorError::Worker { rank: 0, status })?
            .into_inner()
            .id;
        Ok(id)
    }

    /// Runs one step on every rank; returns rank 0's answer once all ranks
    /// have answered and agree.
    pub async fn step(&self, req: pb::StepRequest) -> Result<pb::StepResponse, CoordinatorError> {
        let calls = self.clients.iter().map(|c| {
            let mut c = c.clone();
            let req = req.clone();
            async move { c.step(req).await.map(|r| r.into_inner()) }
        });
        let mut answers = Vec::with_capacity(self.clients.len());
        for (rank, r) in join_all(calls).await.into_iter().enumerate() {
            answers.push(r.map_err(|status| CoordinatorError::Worker { rank, status })?);
        }
        check_agreement(&req, &answers)?;
        answers
            .into_iter()
            .next()
            .ok_or_else(|| CoordinatorError::Unavailable("the group has no ranks".into()))
    }

    /// Asks every rank for its state; an error names the first rank that
    /// did not answer READY within `timeout`.
    pub async fn health(&self, timeout: std::time::Duration) -> Result<(), CoordinatorError> {
        let calls = self.clients.iter().map(|c| {
            let mut c = c.clone();
            async move {
                let mut req = tonic::Request::new(pb::HealthRequest {});
                req.set_timeout(timeout);
                tokio::time::timeout(timeout, c.health(req)).await
            }
        });
        for (rank, r) in join_all(calls).await.into_iter().enumerate() {
            let h = match r {
                Err(_) => {
                    return Err(CoordinatorError::Unavailable(format!(
                        "rank {rank} did not answer a health check within {timeout:?}"
                    )))
                }
                Ok(r) => r.map_err(|status| CoordinatorError::Worker { rank, status })?,
            };
            let h = h.into_inner();
            if h.state != pb::WorkerState::Ready as i32 {
                return Err(CoordinatorError::Unavailable(format!(
                    "rank {rank} is not ready ({:?}) {}",
                    pb::WorkerState::try_from(h.state).unwrap_or(pb::WorkerState::Unspecified),
                    h.detail
                )));
            }
        }
        Ok(())
    }

    /// Asks every worker to exit; errors are ignored (it may be gone).
    /// Asks every rank's process to exit (a replacement that took a rank's address
    /// meanwhile ignores the request: it names the process it means).
    pub async fn shutdown(&self) {
        let calls = self.clients.iter().zip(&self.members).map(|(c, m)| {
            let mut c = c.clone();
            let instance = m.instance;
            async move {
                let _ = c.shutdown(pb::ShutdownRequest { instance }).await;
            }
        });
        join_all(calls).await;
    }

    /// The ranks' members, by rank.
    pub fn members(&self) -> &[Member] {
        &self.members
    }
}

fn check_agreement(
    req: &pb::StepRequest,
    answers: &[pb::StepResponse],
) -> Result<(), CoordinatorError> {
    let want = req.seqs.iter().filter(|s| s.sample).count();
    let Some(first) = answers.first() else {
        return Ok(());
    };
    for (rank, a) in answers.iter().enumerate() {
        if a.step_id != req.step_id || a.rank as usize != rank {
            return Err(CoordinatorError::RankDisagreement(format!(
                "rank {rank} answered step {} as rank {}",
                a.step_id, a.rank
            )));
        }
        if a.tokens.len() != want {
            return Err(CoordinatorError::RankDisagreement(format!(
                "rank {rank} sampled {} tokens, expected {want}",
                a.tokens.len()
            )));
        }
        for (x, y) in a.tokens.iter().zip(&first.tokens) {
            if x.seq_id != y.seq_id
                || x.token != y.token
                || x.logprob.to_bits() != y.logprob.to_bits()
            {
                return Err(CoordinatorError::RankDisagreement(format!(
                    "sequence {}: rank 0 sampled {} ({}), rank {rank} sampled {} ({})",
                    y.seq_id, y.token, y.logprob, x.token, x.logprob
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(rank: u32, token: u32) -> pb::StepResponse {
        pb::StepResponse {
            step_id: 7,
            rank,
            tokens: vec![pb::SampledToken {
                seq_id: 1,
                token,
                logprob: -0.5,
                ..Default::default()
            }],
            debug_logits: vec![],
        }
    }

    #[test]
    fn disagreeing_ranks_are_caught() {
        let req = pb::StepRequest {
            step_id: 7,
            seqs: vec![pb::SequenceStep {
                seq_id: 1,
                tokens: vec![3],
                start_pos: 0,
                sample: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(check_agreement(&req, &[answer(0, 5), answer(1, 5), answer(2, 5)]).is_ok());
        let err = check_agreement(&req, &[answer(0, 5), answer(1, 6)]).expect_err("must disagree");
        assert!(err.to_string().contains("rank 1 sampled 6"), "{err}");
        assert!(check_agreement(&req, &[answer(0, 5), answer(0, 5)]).is_err());
        let mut missing = answer(1, 5);
        missing.tokens.clear();
        assert!(check_agreement(&req, &[answer(0, 5), missing]).is_err());
    }
}
