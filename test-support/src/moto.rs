//! Reaching the moto server that `tests/setup/services.sh` starts (`IOTPIPE_TEST_MOTO`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kinesis::config::Credentials;
use aws_sdk_kinesis::types::StreamStatus;

/// Region of every moto resource the tests make.
pub const REGION: &str = "us-east-1";
/// moto takes any credentials; these say where they come from.
pub const ACCESS_KEY: &str = "iotpipe-test";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "iotpipe-test-secret";

/// The moto endpoint. A test that needs moto fails without it: it never skips.
///
/// # Panics
/// When `IOTPIPE_TEST_MOTO` is not set.
pub fn moto() -> String {
    match std::env::var("IOTPIPE_TEST_MOTO") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "IOTPIPE_TEST_MOTO is not set: this test needs the moto server that the test \
             set-up starts. Run `bash tests/run.sh`, or `source tests/setup/services.sh && \
             services_up` and then cargo test in the same shell."
        ),
    }
}

/// AWS configuration pointing at moto: endpoint override, fixed region, static test
/// credentials (nothing is read from the developer's own AWS set-up).
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(moto())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
        .load()
        .await
}

/// The `AWS_*` variables an S3 client needs for moto, for `telemetry::store::open_store_with`.
pub fn s3_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", moto()),
        ("AWS_REGION", REGION.into()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
    ]
}

/// A name no earlier run on the same moto has used (moto keeps state until it restarts).
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Creates an S3 bucket on moto with a bare `PUT /bucket` (moto does not check
/// signatures), which spares the tests the S3 SDK crate and its build time.
///
/// # Panics
/// When moto is not reachable or refuses the bucket.
pub fn create_bucket(bucket: &str) {
    let endpoint = moto();
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "PUT /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
        "creating bucket {bucket} on moto: {response}"
    );
}

/// Creates a Kinesis data stream of `shards` shards on moto and waits until it is ACTIVE.
///
/// # Panics
/// When moto refuses the stream or it does not become ACTIVE within about 10 s.
pub async fn create_kinesis_stream(sdk: &SdkConfig, name: &str, shards: i32) {
    let client = aws_sdk_kinesis::Client::new(sdk);
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .unwrap();
    for _ in 0..100 {
        let summary = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .unwrap();
        if summary
            .stream_description_summary()
            .map(|s| s.stream_status())
            == Some(&StreamStatus::Active)
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("stream {name} did not become ACTIVE");
}

/// Creates an SQS queue on moto and returns its URL and ARN.
///
/// # Panics
/// When moto refuses the queue.
pub async fn create_sqs_queue(sdk: &SdkConfig, name: &str) -> (String, String) {
    let client = aws_sdk_sqs::Client::new(sdk);
    let url = client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let attrs = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap();
    let arn = attrs
        .attributes
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
                .cloned()
        })
        .unwrap();
    (url, arn)
}

/// Sends S3 `ObjectCreated` notifications of `bucket`'s keys under `prefix` to the SQS
/// queue `queue_arn` (a bare `PUT /bucket?notification`, as [`create_bucket`] does).
///
/// # Panics
/// When moto is not reachable or refuses the configuration.
pub fn notify_queue(bucket: &str, queue_arn: &str, prefix: &str) {
    let body = format!(
        "<NotificationConfiguration><QueueConfiguration><Id>new-objects</Id>\
         <Queue>{queue_arn}</Queue><Event>s3:ObjectCreated:*</Event>\
         <Filter><S3Key><FilterRule><Name>prefix</Name><Value>{prefix}</Value></FilterRule>\
         </S3Key></Filter></QueueConfiguration></NotificationConfiguration>"
    );
    let endpoint = moto();
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "PUT /{bucket}?notification HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
        "configuring the notifications of {bucket} on moto: {response}"
    );
}
