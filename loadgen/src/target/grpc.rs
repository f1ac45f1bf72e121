//! weft's client API: `weft.v1.Generation/GenerateStream` over gRPC.

use futures::future::BoxFuture;
use futures::FutureExt;
use tonic::transport::Channel;
use weft_proto::v1::generate_request::Prompt;
use weft_proto::v1::generate_response::Event;
use weft_proto::v1::generation_client::GenerationClient;
use weft_proto::v1::GenerateRequest;

use super::{GenRequest, Recorder, RequestError, Target, Timeline};

/// A weft coordinator. All requests share one HTTP/2 channel, as weft's
/// clients do.
#[derive(Debug, Clone)]
pub struct GrpcTarget {
    client: GenerationClient<Channel>,
    model: String,
}

impl GrpcTarget {
    /// Connects to `http://host:port`; `model` `None` selects the served model.
    pub async fn connect(base_url: &str, model: Option<String>) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(base_url.to_string())?
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to gRPC server at {base_url}: {e}"))?;
        Ok(Self {
            client: GenerationClient::new(channel),
            model: model.unwrap_or_default(),
        })
    }

    async fn run(&self, req: GenRequest) -> Result<Timeline, RequestError> {
        let request = GenerateRequest {
            model: self.model.clone(),
            prompt: Some(Prompt::Text(req.prompt)),
            max_tokens: req.max_tokens,
            // Absent sampling parameters mean greedy decoding.
            sampling: None,
            ignore_eos: true,
            ..Default::default()
        };
        let mut client = self.client.clone();
        let mut rec = Recorder::start();
        let mut stream = client
            .generate_stream(request)
            .await
            .map_err(status_error)?
            .into_inner();
        let mut finished = false;
        while let Some(msg) = stream.message().await.map_err(status_error)? {
            match msg.event {
                Some(Event::Token(_)) => rec.token(),
                Some(Event::Finished(f)) => {
                    finished = true;
                    if let Some(usage) = f.usage {
                        rec.reported(u64::from(usage.completion_tokens));
                    }
                }
                None => {}
            }
        }
        if !finished {
            return Err(RequestError::new(
                "incomplete_stream",
                "stream ended without a Finished message",
            ));
        }
        rec.finish()
    }
}

impl Target for GrpcTarget {
    fn generate(&self, req: GenRequest) -> BoxFuture<'_, Result<Timeline, RequestError>> {
        self.run(req).boxed()
    }
}

fn status_error(status: tonic::Status) -> RequestError {
    RequestError::new(
        format!("grpc_{:?}", status.code()),
        status.message().to_string(),
    )
}
