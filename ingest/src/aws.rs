//! What the AWS sinks ([`crate::kinesis`], [`crate::firehose`]) share: how their SDK
//! clients are tuned, and how a failed call is classified as retriable or fatal.
//!
//! # One retry authority
//! The SDK's own retries are **disabled** on the sink clients. [`crate::sink::deliver`]
//! already retries — only the failed entries, with full jitter, until a deadline that fits
//! the Lambda timeout — and stacking the SDK's three attempts under each of its ten would
//! multiply the calls and blow through that deadline. What the SDK still does is bound
//! each attempt with the timeouts below, so that a hung connection turns into a
//! [`SinkError::Retriable`] instead of eating the whole invocation.

use std::time::Duration;

use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::sink::{EntryOutcome, SinkError};

/// Time allowed to open a connection (TCP + TLS). Inside an AWS region this takes a few
/// milliseconds; a connection that is not up after this long will not be.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Time allowed for one put call, from sending the request to reading the whole
/// response. A 5 MiB PutRecords completes well inside a second in-region; the bound is
/// what turns a hung call into a retry while [`crate::RetryPolicy::deadline`] (20 s by
/// default) still leaves room for more attempts.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Error codes that mean "too fast, slow down". The SDK's own list
/// (`aws_runtime::retries::classifiers::THROTTLING_ERRORS`) plus the KMS throttle that
/// an encrypted Kinesis stream answers with.
pub const THROTTLING_ERROR_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "KMSThrottlingException",
];

/// Error codes of failures on the service's side that a later call may not meet. The
/// SDK's `TRANSIENT_ERRORS`, plus the internal-failure and unavailability codes Kinesis
/// and Firehose document (they usually come with a 5xx status, which is retried anyway).
pub const TRANSIENT_ERROR_CODES: &[&str] = &[
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalFailure",
    "InternalFailureException",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
];

/// HTTP 429 Too Many Requests: throttling, whatever the error code says.
const HTTP_TOO_MANY_REQUESTS: u16 = 429;
/// HTTP 5xx: the service failed, not the request.
const HTTP_SERVER_ERRORS: std::ops::Range<u16> = 500..600;

/// The sink clients' retry setting: none (see the module doc).
pub(crate) fn sink_retry_config() -> RetryConfig {
    RetryConfig::disabled()
}

/// Connect and attempt timeouts of the sink clients.
pub(crate) fn sink_timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .build()
}

/// Loads the AWS configuration the standard way (environment, profile, container or
/// instance credentials; `AWS_REGION`; `AWS_ENDPOINT_URL` for an AWS-compatible server).
/// Called once per cold start.
pub async fn load_sdk_config() -> SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// A failed call in one line: `Code: message` for an error the service answered, the full
/// error context otherwise (connection and timeout failures).
pub fn brief<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match (err, err.code()) {
        (SdkError::ServiceError(_), Some(code)) => {
            format!("{code}: {}", err.message().unwrap_or("(no message)"))
        }
        _ => DisplayErrorContext(err).to_string(),
    }
}

/// Whether an error code is throttling or a transient service failure.
pub fn is_retriable_code(code: &str) -> bool {
    THROTTLING_ERROR_CODES.contains(&code) || TRANSIENT_ERROR_CODES.contains(&code)
}

/// Classifies a put call that failed as a whole. (The raw response type is shared by every
/// SDK service crate; the Kinesis crate's name for it serves Firehose as well.)
///
/// Retriable: timeouts, connection failures, unreadable responses (the call may or may not
/// have been applied — retrying can duplicate, which the analytics de-duplication absorbs,
/// while giving up would lose), throttling and 5xx. Fatal: everything the service rejected
/// on its merits (validation, a missing stream, access denied) and requests that could
/// not even be built. An error kind this code does not know is retried: the deadline
/// bounds that, and the entries are then quarantined rather than dropped.
pub fn classify<E>(err: &SdkError<E, HttpResponse>) -> SinkError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let detail = DisplayErrorContext(err).to_string();
    match err {
        SdkError::ConstructionFailure(_) => SinkError::Fatal(detail),
        SdkError::DispatchFailure(d) if d.is_user() => SinkError::Fatal(detail),
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            SinkError::Retriable(detail)
        }
        SdkError::ServiceError(e) => {
            let status = e.raw().status().as_u16();
            let retriable = err.code().is_some_and(is_retriable_code)
                || status == HTTP_TOO_MANY_REQUESTS
                || HTTP_SERVER_ERRORS.contains(&status);
            if retriable {
                SinkError::Retriable(detail)
            } else {
                SinkError::Fatal(detail)
            }
        }
        _ => SinkError::Retriable(detail),
    }
}

/// One entry of a PutRecords / PutRecordBatch response, as both services shape it.
pub(crate) struct EntryResult<'a> {
    /// The entry's error code, if it failed.
    pub error_code: Option<&'a str>,
    /// The entry's error message.
    pub error_message: Option<&'a str>,
    /// Whether the service acknowledged the entry (a sequence number or record id).
    pub acknowledged: bool,
}

/// Maps response entries to outcomes, in request order. An entry with neither an error code
/// nor an acknowledgement counts as a retriable failure (`unacknowledged_code`): a duplicate
/// is absorbed downstream, a loss is not. Missing trailing entries are left to
/// [`crate::sink::deliver`], which retries them.
pub(crate) fn entry_outcomes<'a>(
    entries: impl Iterator<Item = EntryResult<'a>>,
    retriable_codes: &[&str],
    unacknowledged_code: &str,
) -> Vec<EntryOutcome> {
    entries
        .map(|e| match (e.error_code, e.acknowledged) {
            (Some(code), _) => EntryOutcome::Failed {
                code: code.to_owned(),
                message: e.error_message.unwrap_or_default().to_owned(),
                retriable: retriable_codes.contains(&code),
            },
            (None, true) => EntryOutcome::Ok,
            (None, false) => EntryOutcome::Failed {
                code: unacknowledged_code.to_owned(),
                message: "the entry has neither an error code nor an acknowledgement".to_owned(),
                retriable: true,
            },
        })
        .collect()
}

/// How many outcomes are failures.
/// Logs (at debug) a batch call that left entries unacknowledged — failed, or missing
/// from a short response — naming the operation and the service's own failed count.
pub(crate) fn log_partial_failure(
    operation: &str,
    stream: &str,
    sent: usize,
    outcomes: &[EntryOutcome],
    service_failed_count: Option<i32>,
) {
    let failed = outcomes
        .iter()
        .filter(|o| !matches!(o, EntryOutcome::Ok))
        .count();
    if failed > 0 || outcomes.len() != sent {
        tracing::debug!(
            operation,
            stream,
            sent,
            results = outcomes.len(),
            failed,
            service_failed_count,
            "batch call partly failed"
        );
    }
}
