use clap::Parser;
use weft_coordinator::server::{run, Listeners};
use weft_coordinator::CoordinatorArgs;

fn main() -> anyhow::Result<()> {
    let args = CoordinatorArgs::parse();
    weft_worker::process::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listeners = Listeners {
            client: tokio::net::TcpListener::bind(args.net.listen).await?,
            cluster: tokio::net::TcpListener::bind(args.net.cluster_listen).await?,
        };
        let on_ready = Box::new(|r: weft_coordinator::server::Ready| {
            println!("weft-coordinator ready: client API on {}", r.addr)
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
