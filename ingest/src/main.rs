//! The ingest Lambda binary. The AWS sinks (Kinesis PutRecords, Firehose PutRecordBatch)
//! and the S3 quarantine are wired here by the AWS-path work; until then the binary refuses
//! to start rather than pretend to deliver.

fn main() {
    eprintln!(
        "ingest: the AWS wiring (Kinesis/Firehose sinks, S3 quarantine) is not built yet; \
         run the handler locally with `iotpipe up` or `iotpipe replay`"
    );
    std::process::exit(2);
}
