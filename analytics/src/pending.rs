//! New-object notifications: how the rollup finds new telemetry without listing history.
//!
//! Whoever writes a telemetry object also leaves a *pending marker*, an empty object at
//! `{pending_prefix}/{telemetry key}` (default `stats/_pending/telemetry/dt=…/hour=…/NAME`).
//! The planner lists only the markers — the objects not yet rolled up — to learn which
//! hour partitions have new data, and deletes a partition's markers once every unit of
//! the partition has aggregated it. One marker per object (not one per partition) so that
//! an object written while its partition is being rolled up keeps its own marker and is
//! picked up by the next run.
//!
//! The local Firehose emulation writes the markers after each Parquet object completes;
//! on AWS they are the S3 `ObjectCreated` event notifications, and the same markers can be
//! written from them. A marker lost to a crash between the object and the marker is
//! healed by a full scan (`iotpipe rollup --full-scan`), which the first run of a store
//! always does.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

/// The marker of the telemetry object `key`: the same key under `pending_prefix`.
fn marker_of(pending_prefix: &str, key: &str) -> Path {
    Path::from(format!(
        "{}/{}",
        pending_prefix.trim_matches('/'),
        key.trim_matches('/')
    ))
}

/// Leaves the marker of the new telemetry object `key` under `pending_prefix`.
pub async fn mark(
    store: &Arc<dyn ObjectStore>,
    pending_prefix: &str,
    key: &str,
) -> Result<(), object_store::Error> {
    store
        .put(
            &marker_of(pending_prefix, key),
            PutPayload::from_static(b""),
        )
        .await
        .map(|_| ())
}

/// Leaves the marker of `key` unless it exists already (a conditional create, so an
/// existing marker is not rewritten).
pub async fn ensure(
    store: &Arc<dyn ObjectStore>,
    pending_prefix: &str,
    key: &str,
) -> Result<(), object_store::Error> {
    let create = PutOptions::from(PutMode::Create);
    match store
        .put_opts(
            &marker_of(pending_prefix, key),
            PutPayload::from_static(b""),
            create,
        )
        .await
    {
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Every marker under `pending_prefix`, with the telemetry key it stands for.
pub async fn list(
    store: &Arc<dyn ObjectStore>,
    pending_prefix: &str,
) -> Result<Vec<(ObjectMeta, String)>, object_store::Error> {
    let prefix = pending_prefix.trim_matches('/');
    let listed: Vec<ObjectMeta> = store.list(Some(&Path::from(prefix))).try_collect().await?;
    Ok(listed
        .into_iter()
        .filter_map(|meta| {
            let key = meta
                .location
                .as_ref()
                .strip_prefix(prefix)?
                .strip_prefix('/')?
                .to_string();
            Some((meta, key))
        })
        .collect())
}
