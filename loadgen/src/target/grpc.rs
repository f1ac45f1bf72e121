//! weft's client API: `weft.v1.Generation/GenerateStream` over gRPC.

use futures::future::BoxFuture;
use futures::FutureExt;
use tonic::transport::Channel;
use weft_proto::v1::generate_request::Prompt as GenPrompt;
use weft_proto::v1::generate_response::Event;
use weft_proto::v1::generation_client::GenerationClient;
use weft_proto::v1::{ChatMessage, ChatRequest, GenerateRequest, Role as ProtoRole, TokenIds};

use super::{GenRequest, Message, Prompt, Recorder, RequestError, Role, Target, Timeline};

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
        let mut client = self.client.clone();
        let mut rec = Recorder::start();
        let stream = match req.prompt {
            Prompt::Text(text) => {
                let request = self.generate_request(GenPrompt::Text(text), req.max_tokens);
                client.generate_stream(request).await
            }
            Prompt::Ids(ids) => {
                let prompt = GenPrompt::TokenIds(TokenIds { ids });
                let request = self.generate_request(prompt, req.max_tokens);
                client.generate_stream(request).await
            }
            Prompt::Chat(messages) => {
                let request = ChatRequest {
                    model: self.model.clone(),
                    messages: messages.iter().map(chat_message).collect(),
                    max_tokens: req.max_tokens,
                    // Absent sampling parameters mean greedy decoding.
                    sampling: None,
                    ignore_eos: true,
                    ..Default::default()
                };
                client.chat_stream(request).await
            }
        };
        let mut stream = stream.map_err(status_error)?.into_inner();
        let mut finished = false;
        while let Some(msg) = stream.message().await.map_err(status_error)? {
            match msg.event {
                Some(Event::Token(t)) => {
                    rec.token_id(t.id, &format!("{}{}", t.reasoning_text, t.text));
                }
                Some(Event::Finished(f)) => {
                    finished = true;
                    rec.trailing_text(&f.trailing_reasoning_text);
                    rec.trailing_text(&f.trailing_text);
                    if let Some(usage) = f.usage {
                        rec.usage(
                            Some(u64::from(usage.prompt_tokens)),
                            u64::from(usage.completion_tokens),
                        );
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

    fn generate_request(&self, prompt: GenPrompt, max_tokens: u32) -> GenerateRequest {
        GenerateRequest {
            model: self.model.clone(),
            prompt: Some(prompt),
            max_tokens,
            // Absent sampling parameters mean greedy decoding.
            sampling: None,
            ignore_eos: true,
            ..Default::default()
        }
    }
}

fn chat_message(m: &Message) -> ChatMessage {
    let role = match m.role {
        Role::System => ProtoRole::System,
        Role::User => ProtoRole::User,
        Role::Assistant => ProtoRole::Assistant,
    };
    ChatMessage {
        role: role as i32,
        content: m.content.clone(),
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
