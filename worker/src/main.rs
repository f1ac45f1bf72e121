use clap::Parser;
use weft_worker::WorkerArgs;

fn main() -> anyhow::Result<()> {
    let args = WorkerArgs::parse();
    weft_worker::process::init_tracing();
    if args.exit_with_parent {
        exit_with_parent();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(weft_worker::service::run(
        args,
        weft_worker::process::shutdown_signal(),
    ));
    use weft_worker::WorkerError as E;
    if let Err(e @ (E::Fenced(_) | E::LeaseLapsed | E::CoordinatorReplaced)) = &result {
        // Calls may still hang on the lost network (and the engine thread in a
        // collective): exit now instead of waiting for the runtime to wind down.
        eprintln!("Error: {e}");
        std::process::exit(3);
    }
    result?;
    Ok(())
}

/// Asks the kernel to kill this process when its parent dies, so a
/// coordinator that is killed leaves no orphan workers behind.
fn exit_with_parent() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integer arguments and
        // touches no memory of this process.
        let rc = unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        if rc != 0 {
            tracing::warn!("prctl(PR_SET_PDEATHSIG) failed");
        }
        // The parent may have died before the call: then we were re-parented.
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } == 1 {
            std::process::exit(1);
        }
    }
}
