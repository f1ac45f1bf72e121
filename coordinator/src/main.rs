use clap::Parser;
use weft_coordinator::server::{run, Listeners};
use weft_coordinator::CoordinatorArgs;

fn main() -> anyhow::Result<()> {
    let args = CoordinatorArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listeners = Listeners {
            client: tokio::net::TcpListener::bind(args.net.listen).await?,
            cluster: tokio::net::TcpListener::bind(args.net.cluster_listen).await?,
        };
        let on_ready = Box::new(|addr| println!("weft-coordinator ready: client API on {addr}"));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown signal received");
            token.cancel();
        });
        run(args, listeners, shutdown, on_ready).await?;
        anyhow::Ok(())
    })?;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
