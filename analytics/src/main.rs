//! The `rollup` Lambda: wires tracing, the store and the runtime to
//! [`analytics::handler::handle`].
//!
//! For now the store is the local data directory named by `IOTPIPE_DATA`; S3
//! configuration comes with the AWS deployment. A missing or unusable directory fails the
//! cold start, not an invocation.

use analytics::RollupConfig;
use analytics::config::local_store_from_env;
use analytics::handler::handle;
use lambda_runtime::{Error, run, service_fn};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Error> {
    // JSON lines for CloudWatch; `RUST_LOG` overrides the default level.
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_current_span(false)
        .init();

    let store = local_store_from_env().map_err(|e| {
        // The log line is what CloudWatch shows for a failed init; the returned message
        // (Display, not Debug) is what a local run prints.
        tracing::error!(error = %e, "cold start failed");
        e.to_string()
    })?;
    let cfg = RollupConfig::default();
    run(service_fn(|event| handle(event, store.clone(), &cfg))).await
}
