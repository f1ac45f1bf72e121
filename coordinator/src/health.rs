//! Health that tells the truth: NOT_SERVING until every rank has loaded its
//! shard and a one-token canary step has completed, and again whenever the
//! group is lost or the server drains. One state feeds both
//! `grpc.health.v1` (served here, straight from that state, so a check
//! never lags behind it) and the HTTP `/health`.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health as HealthApi, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The gRPC services whose status is reported ("" is the whole server).
const SERVICES: &[&str] = &["", "weft.v1.Generation", "weft.v1.Models"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthState {
    pub serving: bool,
    /// Why not serving (empty while serving).
    pub reason: String,
}

/// Shared health state; cheap to clone.
#[derive(Clone)]
pub struct Health {
    tx: Arc<watch::Sender<HealthState>>,
}

impl Health {
    /// Starts NOT_SERVING with `reason`.
    pub fn new(reason: &str) -> Self {
        let (tx, _) = watch::channel(HealthState {
            serving: false,
            reason: reason.to_string(),
        });
        Health { tx: Arc::new(tx) }
    }

    pub fn set_serving(&self) {
        self.set(HealthState {
            serving: true,
            reason: String::new(),
        });
    }

    pub fn set_not_serving(&self, reason: impl Into<String>) {
        self.set(HealthState {
            serving: false,
            reason: reason.into(),
        });
    }

    fn set(&self, s: HealthState) {
        self.tx.send_if_modified(|cur| {
            let changed = *cur != s;
            *cur = s;
            changed
        });
    }

    pub fn state(&self) -> HealthState {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<HealthState> {
        self.tx.subscribe()
    }

    /// The `grpc.health.v1.Health` service over this state.
    pub fn grpc_service(&self) -> HealthServer<GrpcHealth> {
        HealthServer::new(GrpcHealth(self.clone()))
    }
}

fn status_of(s: &HealthState) -> HealthCheckResponse {
    let status = if s.serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    HealthCheckResponse {
        status: status as i32,
    }
}

fn known(service: &str) -> Result<(), Status> {
    if SERVICES.contains(&service) {
        Ok(())
    } else {
        Err(Status::not_found(format!(
            "unknown service {service:?}; known: \"\", weft.v1.Generation, weft.v1.Models"
        )))
    }
}

/// `grpc.health.v1.Health` answering from [`Health`].
pub struct GrpcHealth(Health);

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl HealthApi for GrpcHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        known(&request.get_ref().service)?;
        Ok(Response::new(status_of(&self.0.state())))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        known(&request.get_ref().service)?;
        // Sends the current status, then one message per change of the
        // serving flag (reason changes alone are not repeated).
        let mut last = None;
        let stream =
            tokio_stream::wrappers::WatchStream::new(self.0.subscribe()).filter_map(move |s| {
                let r = status_of(&s);
                let fresh = last != Some(r.status);
                last = Some(r.status);
                fresh.then_some(Ok(r))
            });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(service: &str) -> Request<HealthCheckRequest> {
        Request::new(HealthCheckRequest {
            service: service.into(),
        })
    }

    #[tokio::test]
    async fn check_and_watch_follow_the_state() {
        let h = Health::new("loading");
        let g = GrpcHealth(h.clone());
        let not_serving = ServingStatus::NotServing as i32;
        let serving = ServingStatus::Serving as i32;
        let status = |r: Response<HealthCheckResponse>| r.into_inner().status;
        assert_eq!(status(g.check(req("")).await.unwrap()), not_serving);
        let e = g.check(req("nope")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let mut w = g
            .watch(req("weft.v1.Generation"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(w.next().await.unwrap().unwrap().status, not_serving);
        h.set_not_serving("still loading"); // same flag: no message
        h.set_serving();
        assert_eq!(w.next().await.unwrap().unwrap().status, serving);
        assert_eq!(
            status(g.check(req("weft.v1.Models")).await.unwrap()),
            serving
        );
        h.set_not_serving("a rank was lost");
        assert_eq!(w.next().await.unwrap().unwrap().status, not_serving);
        assert_eq!(h.state().reason, "a rank was lost");
    }
}
