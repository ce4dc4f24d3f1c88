//! The ingest Lambda binary: JSON logs for CloudWatch, configuration from the environment
//! ([`ingest::Config`]), the sink client and the S3 quarantine store built once, then the
//! runtime loop around [`ingest::handle`] (or [`ingest::handle_kinesis`] with
//! `IOTPIPE_EVENT=kinesis`, the `kinesis` topology). A missing or bad variable fails the cold start.

// The runtime's future nests the handler's, which nests both SDK clients' request futures
// (AnySink): computing its layout goes deeper than rustc's default query limit of 128.
#![recursion_limit = "256"]

use ingest::{AnySink, Config, Ingest};
use lambda_runtime::{Error, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::logging::init_lambda();

    let ingest = init().await.map_err(|e| {
        // The log line is what CloudWatch shows for a failed init; the returned error is
        // what the runtime reports to Lambda.
        tracing::error!(error = %e, "cold start failed");
        e
    })?;
    let ingest = &ingest;
    // Which event the function receives (the template sets it per topology).
    match std::env::var(ingest::EVENT_VAR).as_deref() {
        Err(_) | Ok("rule") => run(service_fn(move |event| ingest::handle(event, ingest))).await,
        Ok("kinesis") => {
            run(service_fn(move |event| {
                ingest::handle_kinesis(event, ingest)
            }))
            .await
        }
        Ok(other) => Err(format!(
            "{}={other:?}: set it to `rule` (topology per-message: one IoT rule event per \
             invocation) or `kinesis` (topology kinesis: Kinesis batches of rule records)",
            ingest::EVENT_VAR
        )
        .into()),
    }
}

/// Everything built once per cold start.
async fn init() -> Result<Ingest<AnySink>, Error> {
    let config = Config::from_env()?;
    let sdk = ingest::aws::load_sdk_config().await;
    let sink = AnySink::from_config(&config, &sdk);
    // The quarantine store is rarely used: its S3 client (and the root certificates its
    // HTTPS client loads) is built at the first quarantined payload, not at every cold start.
    let store = telemetry::store::open_store_lazy(&config.bucket_url())?;
    tracing::info!(
        sink = ?config.sink,
        stream = %config.stream_name,
        bucket = %config.bucket,
        quarantine_prefix = %config.quarantine_prefix,
        "ingest configured"
    );
    Ok(Ingest::new(sink, store, config.ingest_config()))
}
