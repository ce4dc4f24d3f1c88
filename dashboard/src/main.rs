//! The `report` Lambda: wires tracing, the store and the runtime to
//! [`dashboard::report::handle`].
//!
//! The store is the S3 bucket named by `IOTPIPE_BUCKET` (region, credentials and an
//! optional `AWS_ENDPOINT_URL` from the standard AWS variables), or for local runs the
//! directory named by `IOTPIPE_DATA`. `IOTPIPE_DASHBOARD_PREFIX` (default `dashboard`)
//! is where the pages go. A missing or unusable setting fails the cold start, naming the
//! variable.

use std::sync::Arc;

use dashboard::SITE_PREFIX;
use dashboard::report::handle;
use lambda_runtime::{Error, run, service_fn};
use object_store::ObjectStore;

/// The S3 bucket holding `stats/`, `telemetry/` and `quarantine/`.
const BUCKET_VAR: &str = "IOTPIPE_BUCKET";
/// A local data directory instead of a bucket.
const DATA_VAR: &str = analytics::config::DATA_DIR_ENV;
/// Key prefix of the pages (default [`SITE_PREFIX`]).
const PREFIX_VAR: &str = "IOTPIPE_DASHBOARD_PREFIX";

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::logging::init_lambda();
    let (store, prefix) = setup().map_err(|e| {
        tracing::error!(error = %e, "cold start failed");
        e
    })?;
    let prefix = prefix.as_str();
    run(service_fn(|event| handle(event, store.clone(), prefix))).await
}

fn setup() -> Result<(Arc<dyn ObjectStore>, String), String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let url = match (var(BUCKET_VAR), var(DATA_VAR)) {
        (Some(bucket), None) => format!("s3://{}", bucket.trim()),
        (None, Some(dir)) => dir,
        _ => {
            return Err(format!(
                "set exactly one of {BUCKET_VAR} (an S3 bucket) or {DATA_VAR} (a local data directory)"
            ));
        }
    };
    let store =
        telemetry::store::open_store(&url).map_err(|e| format!("{BUCKET_VAR}/{DATA_VAR}: {e}"))?;
    let prefix = var(PREFIX_VAR).unwrap_or_else(|| SITE_PREFIX.to_string());
    Ok((store, prefix.trim_matches('/').to_string()))
}
