//! weft-load: a load generator for weft's gRPC API and for OpenAI-compatible
//! completion servers, reporting vLLM-style serving metrics.
//!
//! - [`target`]: the servers (one [`target::Target`] per protocol).
//! - [`workload`]: what each request asks for.
//! - [`arrivals`]: open-loop request arrival times (Poisson / gamma).
//! - [`runner`]: the load shape (concurrency, budget, warm-up, deadline).
//! - [`metrics`]: pure metric math; [`report`]: JSON and summary line.
//! - [`check`]: correctness under load; [`fault`]: fault injection.
//! - [`charts`]: PNG charts; [`output`]: progress bar, charts and recorded
//!   expectations as the binary writes them.

pub mod arrivals;
pub mod charts;
pub mod check;
pub mod cli;
pub mod fault;
pub mod metrics;
pub mod output;
pub mod report;
pub mod runner;
pub mod target;
pub mod workload;
