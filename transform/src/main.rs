//! The transform Lambda binary: JSON logs for CloudWatch, then the runtime loop around
//! [`transform::handle`]. The handler needs no configuration and no clients.

use lambda_runtime::{run, service_fn};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tracing_subscriber::fmt()
        .json()
        // RUST_LOG, defaulting to `info`.
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        // CloudWatch neither renders ANSI colours nor needs our timestamps: it stamps
        // every line itself.
        .with_ansi(false)
        .without_time()
        // The current span carries the request id; its parents add nothing.
        .with_span_list(false)
        .init();
    run(service_fn(transform::handle)).await
}
