//! The Kinesis reader against scripted SDK responses (`aws-smithy-mocks`), for what moto
//! never does: throttling (`ProvisionedThroughputExceededException`) and expired
//! iterators. Paused time: the backoff sleeps cost nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use aws_sdk_kinesis::operation::get_records::GetRecordsOutput;
use aws_sdk_kinesis::operation::get_shard_iterator::{
    GetShardIteratorInput, GetShardIteratorOutput,
};
use aws_sdk_kinesis::operation::list_shards::ListShardsOutput;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{HashKeyRange, Record, SequenceNumberRange, Shard, ShardIteratorType};
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use ingest::kinesis;
use local::kinesis_reader::{KinesisSource, KinesisSourceConfig};
use object_store::memory::InMemory;
use tokio::sync::{mpsc, watch};

const SHARD: &str = "shardId-000000000000";

fn shards() -> ListShardsOutput {
    ListShardsOutput::builder()
        .shards(
            Shard::builder()
                .shard_id(SHARD)
                .hash_key_range(
                    HashKeyRange::builder()
                        .starting_hash_key("0")
                        .ending_hash_key(u128::MAX.to_string())
                        .build()
                        .unwrap(),
                )
                .sequence_number_range(
                    SequenceNumberRange::builder()
                        .starting_sequence_number("1")
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .build()
}

fn record(seq: &str) -> Record {
    Record::builder()
        .sequence_number(seq)
        .partition_key("sensor-000001")
        .data(Blob::new(format!("record {seq}")))
        .build()
        .unwrap()
}

fn error_body(code: &str) -> Option<String> {
    Some(format!(
        r#"{{"__type":"{code}","message":"scripted {code}"}}"#
    ))
}

#[tokio::test(start_paused = true)]
async fn throttling_backs_off_and_an_expired_iterator_is_renewed_after_the_last_record() {
    let iterator_requests: Arc<Mutex<Vec<GetShardIteratorInput>>> = Arc::default();
    let seen = iterator_requests.clone();
    let list = mock!(aws_sdk_kinesis::Client::list_shards)
        .sequence()
        .output(shards)
        .times(2)
        .build();
    let iterators = mock!(aws_sdk_kinesis::Client::get_shard_iterator)
        .match_requests(move |req| {
            seen.lock().unwrap().push(req.clone());
            true
        })
        .sequence()
        .output(|| {
            GetShardIteratorOutput::builder()
                .shard_iterator("it-1")
                .build()
        })
        .output(|| {
            GetShardIteratorOutput::builder()
                .shard_iterator("it-3")
                .build()
        })
        .build();
    let reads = mock!(aws_sdk_kinesis::Client::get_records)
        .sequence()
        .http_status(400, error_body("ProvisionedThroughputExceededException"))
        .output(|| {
            GetRecordsOutput::builder()
                .records(record("101"))
                .records(record("102"))
                .next_shard_iterator("it-2")
                .millis_behind_latest(0)
                .build()
                .unwrap()
        })
        .http_status(400, error_body("ExpiredIteratorException"))
        .output(|| {
            GetRecordsOutput::builder()
                .set_records(Some(Vec::new()))
                .next_shard_iterator("it-4")
                .millis_behind_latest(0)
                .build()
                .unwrap()
        })
        .build();
    let client = mock_client!(
        aws_sdk_kinesis,
        RuleMode::MatchAny,
        [&list, &iterators, &reads],
        kinesis::configure
    );
    let source = KinesisSource::new(
        client,
        Arc::new(InMemory::new()),
        KinesisSourceConfig::new("telemetry"),
    );
    let (tx, mut rx) = mpsc::channel(16);
    // The producers have already stopped: read to the tip and end.
    let (_stop_tx, stop) = watch::channel(true);
    let report = source.run(tx, stop).await.unwrap();

    let mut got = Vec::new();
    while let Some(e) = rx.recv().await {
        got.push(e.sequence_number);
    }
    assert_eq!(got, ["101", "102"], "each record once, in order");
    assert_eq!(report.throttled, 1);
    assert_eq!(report.expired_iterators, 1);
    assert_eq!(report.get_records_calls, 4);
    let reqs = iterator_requests.lock().unwrap();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[0].shard_iterator_type(),
        Some(&ShardIteratorType::TrimHorizon),
        "no checkpoint: from the trim horizon"
    );
    assert_eq!(
        (
            reqs[1].shard_iterator_type(),
            reqs[1].starting_sequence_number()
        ),
        (Some(&ShardIteratorType::AfterSequenceNumber), Some("102")),
        "renewed after the last record read, so nothing is read twice"
    );
}

#[tokio::test(start_paused = true)]
async fn after_the_stop_a_shard_is_read_until_what_the_run_put_has_arrived() {
    let list = mock!(aws_sdk_kinesis::Client::list_shards)
        .sequence()
        .output(shards)
        .times(2)
        .build();
    let iterators = mock!(aws_sdk_kinesis::Client::get_shard_iterator).then_output(|| {
        GetShardIteratorOutput::builder()
            .shard_iterator("it")
            .build()
    });
    let empty = || {
        GetRecordsOutput::builder()
            .set_records(Some(Vec::new()))
            .next_shard_iterator("it")
            .millis_behind_latest(0)
            .build()
            .unwrap()
    };
    // The put was acknowledged, but GetRecords does not show it at once.
    let reads = mock!(aws_sdk_kinesis::Client::get_records)
        .sequence()
        .output(empty)
        .output(empty)
        .output(|| {
            GetRecordsOutput::builder()
                .records(record("103"))
                .next_shard_iterator("it")
                .millis_behind_latest(0)
                .build()
                .unwrap()
        })
        .output(empty)
        .build();
    let client = mock_client!(
        aws_sdk_kinesis,
        RuleMode::MatchAny,
        [&list, &iterators, &reads],
        kinesis::configure
    );
    let put = kinesis::PutPositions::default();
    put.record(SHARD, "103");
    let source = KinesisSource::new(
        client,
        Arc::new(InMemory::new()),
        KinesisSourceConfig::new("telemetry"),
    )
    .with_put_positions(put);
    let (tx, mut rx) = mpsc::channel(16);
    let (_stop_tx, stop) = watch::channel(true);
    let report = source.run(tx, stop).await.unwrap();
    assert_eq!(
        rx.recv().await.map(|e| e.sequence_number).as_deref(),
        Some("103")
    );
    assert_eq!(
        report.get_records_calls, 4,
        "two empty tips are not the end yet"
    );
}
