//! The Firehose sink against a Firehose API (moto server) with an S3 destination: the
//! objects that land in the bucket hold exactly the records sent.
//!
//! moto's Firehose does no buffering: it writes each PutRecordBatch as one S3 object of
//! the records' raw bytes, concatenated in order. So each object must equal one batch —
//! which also shows the batches were cut at the 500-record limit.
//!
//! Needs `IOTPIPE_TEST_MOTO` (set by `bash tests/run.sh`); fails without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_sdk_firehose::Client;
use aws_sdk_firehose::types::{
    BufferingHints, DeliveryStreamType, ExtendedS3DestinationConfiguration,
};
use bytes::Bytes;
use futures::TryStreamExt;
use ingest::FirehoseSink;
use ingest::sink::{FIREHOSE_MAX_RECORDS, RetryPolicy, SinkRecord, deliver};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use test_support::moto as common;

#[tokio::test]
async fn firehose_batches_land_in_s3_as_exactly_the_records_sent() {
    let sdk = common::sdk_config().await;
    let bucket = common::unique("firehose-moto");
    common::create_bucket(&bucket);
    let stream = common::unique("ingest-firehose");
    let prefix = "raw/";
    Client::new(&sdk)
        .create_delivery_stream()
        .delivery_stream_name(&stream)
        .delivery_stream_type(DeliveryStreamType::DirectPut)
        .extended_s3_destination_configuration(
            ExtendedS3DestinationConfiguration::builder()
                .role_arn("arn:aws:iam::123456789012:role/firehose")
                .bucket_arn(format!("arn:aws:s3:::{bucket}"))
                .prefix(prefix)
                .buffering_hints(
                    BufferingHints::builder()
                        .size_in_mbs(1)
                        .interval_in_seconds(60)
                        .build(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    // 1,100 records: three calls of 500, 500 and 100.
    let records: Vec<SinkRecord> = (0..1100)
        .map(|i| SinkRecord {
            partition_key: format!("sensor-{:06}", i % 7),
            data: Bytes::from(format!(
                "{{\"device_id\":\"sensor-{:06}\",\"seq\":{i},\"metrics\":{{\"t\":{i}.5}}}}\n",
                i % 7
            )),
        })
        .collect();
    let sink = FirehoseSink::from_sdk_config(&sdk, &stream);
    let d = deliver(&sink, records.clone(), &RetryPolicy::default()).await;
    assert_eq!((d.delivered, d.undelivered.len(), d.calls), (1100, 0, 3));

    let s3 =
        telemetry::store::open_store_with(&format!("s3://{bucket}"), common::s3_env()).unwrap();
    let objects: Vec<_> = s3
        .list(Some(&Path::from("raw")))
        .try_collect()
        .await
        .unwrap();
    let mut bodies = Vec::new();
    for o in &objects {
        assert!(o.location.as_ref().starts_with(prefix), "{}", o.location);
        bodies.push(s3.get(&o.location).await.unwrap().bytes().await.unwrap());
    }
    let mut expected: Vec<Bytes> = records
        .chunks(FIREHOSE_MAX_RECORDS)
        .map(|batch| {
            Bytes::from(
                batch
                    .iter()
                    .flat_map(|r| r.data.to_vec())
                    .collect::<Vec<u8>>(),
            )
        })
        .collect();
    // Object names order by time to the second only: compare as sets of batches.
    bodies.sort();
    expected.sort();
    assert_eq!(bodies.len(), 3, "one object per PutRecordBatch");
    assert!(
        bodies == expected,
        "each object is one batch's records, concatenated in order"
    );
}
