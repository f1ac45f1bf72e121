use clap::Parser;
use weft_coordinator::server::{run, Listeners};
use weft_coordinator::CoordinatorArgs;

fn main() -> anyhow::Result<()> {
    let mut args = CoordinatorArgs::parse();
    args.api.api_key_env = std::env::var("WEFT_API_KEY").ok();
    weft_worker::process::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listeners = Listeners {
            client: tokio::net::TcpListener::bind(args.net.listen).await?,
            cluster: tokio::net::TcpListener::bind(args.net.cluster_listen).await?,
            http: tokio::net::TcpListener::bind(args.api.http_listen).await?,
        };
        // Printed before loading, so a caller can watch health from the start.
        println!(
            "weft-coordinator listening: gRPC API on {}, OpenAI-compatible HTTP API on http://{}, cluster API on {}",
            listeners.client.local_addr()?,
            listeners.http.local_addr()?,
            listeners.cluster.local_addr()?
        );
        let on_ready = Box::new(|r: weft_coordinator::server::Ready| {
            println!(
                "weft-coordinator ready: gRPC API on {}, OpenAI-compatible HTTP API on http://{}",
                r.addr, r.http_addr
            )
        });
        let shutdown = tokio_util::sync::CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            weft_worker::process::shutdown_signal().await;
            tracing::info!("shutdown signal received");
            token.cancel();
        });
        run(args, listeners, shutdown, on_ready).await?;
        anyhow::Ok(())
    })?;
    Ok(())
}
