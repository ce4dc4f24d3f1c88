//! `store::open_store` on S3, against moto's S3: what is put under a prefixed location is
//! listed and read back relative to it, lands under the prefix in the bucket, and paging
//! (over 1,000 keys) and multipart uploads work.
//!
//! Needs `IOTPIPE_TEST_MOTO` (set by `bash tests/run.sh`); fails without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use telemetry::store::open_store_with;
use test_support::moto;

fn env() -> Vec<(&'static str, String)> {
    moto::s3_env()
}

/// A fresh bucket on moto.
fn bucket() -> String {
    let bucket = moto::unique("store");
    moto::create_bucket(&bucket);
    bucket
}

#[tokio::test]
async fn an_s3_prefix_is_the_stores_root() {
    let bucket = bucket();
    let store = open_store_with(&format!("s3://{bucket}/runs/r1/"), env()).unwrap();
    let key = Path::from("telemetry/dt=2025-11-25/hour=16/part-0.parquet");
    store
        .put(&key, PutPayload::from_static(b"parquet bytes"))
        .await
        .unwrap();
    store
        .put(&Path::from("stats/x.json"), PutPayload::from_static(b"{}"))
        .await
        .unwrap();

    let listed: Vec<_> = store
        .list(Some(&Path::from("telemetry")))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].location, key, "listed relative to the prefix");
    assert_eq!(listed[0].size, 13);
    let body = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(&body[..], b"parquet bytes");

    // Seen from the bucket's root, the objects are under the prefix.
    let root = open_store_with(&format!("s3://{bucket}"), env()).unwrap();
    let mut all: Vec<String> = root
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    all.sort();
    assert_eq!(
        all,
        [
            "runs/r1/stats/x.json",
            "runs/r1/telemetry/dt=2025-11-25/hour=16/part-0.parquet"
        ]
    );
}

#[tokio::test]
async fn listing_pages_past_a_thousand_keys_and_multipart_uploads_complete() {
    let bucket = bucket();
    let store = open_store_with(&format!("s3://{bucket}/p"), env()).unwrap();
    // S3 lists at most 1,000 keys per page.
    let puts = (0..1005).map(|i| {
        let store = store.clone();
        async move {
            store
                .put(
                    &Path::from(format!("k/{i:05}")),
                    PutPayload::from(vec![b'x']),
                )
                .await
        }
    });
    futures::stream::iter(puts)
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let n = store
        .list(Some(&Path::from("k")))
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .len();
    assert_eq!(n, 1005);

    // 12 MiB in parts of 5 MiB (S3's minimum part size): a real multipart upload.
    let key = Path::from("big/object.bin");
    let upload = store.put_multipart(&key).await.unwrap();
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 5 * 1024 * 1024);
    let data: Vec<u8> = (0..12 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    writer.write(&data);
    writer.finish().await.unwrap();
    let back = store.get(&key).await.unwrap().bytes().await.unwrap();
    assert!(back == data, "the multipart object reads back whole");
}

#[tokio::test]
async fn a_lazily_opened_store_writes_where_open_store_reads() {
    let bucket = bucket();
    let url = format!("s3://{bucket}/lazy");
    let lazy = telemetry::store::open_store_lazy_with(&url, env()).unwrap();
    let key = Path::from("quarantine/q.jsonl");
    lazy.put(&key, PutPayload::from_static(b"{\"reason\":\"x\"}\n"))
        .await
        .unwrap();
    let listed: Vec<_> = lazy.list(None).try_collect().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].location, key);
    let eager = open_store_with(&url, env()).unwrap();
    let body = eager.get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(&body[..], b"{\"reason\":\"x\"}\n");
}
