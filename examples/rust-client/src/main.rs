//! A minimal client of weft's gRPC API: lists the served model, streams a
//! chat answer, then tokenizes a sentence.
//!
//! Usage: `weft-example-client [http://127.0.0.1:50051]`; an API key, if the
//! server needs one, comes from the WEFT_API_KEY environment variable.

use std::io::Write;

use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;
use weft_proto::v1::{self, generation_client::GenerationClient, models_client::ModelsClient};

/// Wraps a message in a request that carries the API key, if any.
fn with_key<T>(msg: T) -> anyhow::Result<Request<T>> {
    let mut req = Request::new(msg);
    if let Ok(key) = std::env::var("WEFT_API_KEY") {
        let value: MetadataValue<_> = format!("Bearer {key}").parse()?;
        req.metadata_mut().insert("authorization", value);
    }
    Ok(req)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let channel = Channel::from_shared(addr)?.connect().await?;

    let mut models = ModelsClient::new(channel.clone());
    let list = models
        .list_models(with_key(v1::ListModelsRequest {})?)
        .await?;
    for m in &list.get_ref().models {
        println!(
            "model: {} ({}, context {})",
            m.name, m.architecture, m.max_model_len
        );
    }

    let mut client = GenerationClient::new(channel);
    let chat = v1::ChatRequest {
        messages: vec![
            v1::ChatMessage {
                role: v1::Role::System as i32,
                content: "You are a concise assistant.".into(),
            },
            v1::ChatMessage {
                role: v1::Role::User as i32,
                content: "Name three colours of the rainbow.".into(),
            },
        ],
        max_tokens: 32,
        sampling: Some(v1::SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            seed: Some(42),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut stream = client.chat_stream(with_key(chat)?).await?.into_inner();
    print!("answer: ");
    while let Some(event) = stream.next().await {
        match event?.event {
            Some(v1::generate_response::Event::Token(t)) => print!("{}", t.text),
            Some(v1::generate_response::Event::Finished(f)) => {
                let usage = f.usage.unwrap_or_default();
                println!("{}", f.trailing_text);
                println!(
                    "finished: {:?}, {} prompt + {} completion tokens",
                    f.reason(),
                    usage.prompt_tokens,
                    usage.completion_tokens
                );
            }
            None => {}
        }
        std::io::stdout().flush()?;
    }

    let tokens = client
        .tokenize(with_key(v1::TokenizeRequest {
            input: Some(v1::tokenize_request::Input::Text("Hello, weft!".into())),
            ..Default::default()
        })?)
        .await?;
    println!("tokens: {:?}", tokens.get_ref().ids);
    Ok(())
}
