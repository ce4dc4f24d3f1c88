//! The transform Lambda binary: JSON logs for CloudWatch, then the runtime loop.
//!
//! `IOTPIPE_INPUT` ([`transform::INPUT_VAR`]) says what the records hold, set by the template
//! per topology: `stream` (default; [`transform::handle`], no configuration, no clients) or
//! `raw` ([`transform::RawTransform`]: also `IOTPIPE_BUCKET`, the bucket of the quarantine,
//! `IOTPIPE_QUARANTINE_PREFIX`, default `quarantine`, and `IOTPIPE_TELEMETRY_PREFIX`, default
//! `telemetry`: where the readings of device batches spanning event hours are written in
//! their own partitions). A bad value fails the cold start.

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use tracing::Instrument;
use transform::{INPUT_VAR, Input, RawTransform};

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::logging::init_lambda();
    let input: Input = match std::env::var(INPUT_VAR) {
        Ok(v) => v.parse()?,
        Err(_) => Input::Stream,
    };
    match input {
        Input::Stream => run(service_fn(transform::handle)).await,
        Input::Raw => {
            let bucket = std::env::var("IOTPIPE_BUCKET").map_err(|_| {
                "IOTPIPE_BUCKET is not set: with IOTPIPE_INPUT=raw the transform writes \
                 rejected payloads to s3://$IOTPIPE_BUCKET/$IOTPIPE_QUARANTINE_PREFIX"
            })?;
            let prefix = std::env::var("IOTPIPE_QUARANTINE_PREFIX")
                .unwrap_or_else(|_| telemetry::layout::QUARANTINE_PREFIX.to_owned());
            let telemetry_prefix = std::env::var("IOTPIPE_TELEMETRY_PREFIX")
                .unwrap_or_else(|_| telemetry::layout::TELEMETRY_PREFIX.to_owned());
            // Built at the first quarantined payload, not at every cold start.
            let store = telemetry::store::open_store_lazy(&format!(
                "{}{bucket}",
                telemetry::store::S3_SCHEME
            ))?;
            tracing::info!(input = input.as_str(), %bucket, %prefix, %telemetry_prefix,
                "transform configured");
            let raw = RawTransform::new(store, telemetry::ValidationConfig::default(), &prefix)
                .with_telemetry_prefix(&telemetry_prefix);
            let raw = &raw;
            run(service_fn(move |event: LambdaEvent<_>| async move {
                let (payload, context) = event.into_parts();
                let span = tracing::info_span!("transform", request_id = %context.request_id);
                let answer = raw.transform(&payload).instrument(span).await?;
                Ok::<_, Error>(answer.0)
            }))
            .await
        }
    }
}
