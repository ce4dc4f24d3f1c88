//! The Lambda functions' log set-up, one for all four binaries: JSON lines for CloudWatch,
//! `RUST_LOG` (default `info`), no ANSI colours and no timestamps (CloudWatch stamps every
//! line itself), and the current span (the runtime's request id) without its parents.

use tracing_subscriber::EnvFilter;

/// Installs the JSON subscriber described in the [module documentation](self). Call once,
/// first thing in a Lambda binary's `main`.
pub fn init_lambda() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(false)
        .without_time()
        .with_span_list(false)
        .init();
}
