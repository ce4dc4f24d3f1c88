//! The rollup's checkpoint: which telemetry objects have been aggregated.
//!
//! One JSON object in the store (default `stats/_checkpoint/rollup.json`), replaced with a
//! single put — atomic on every object store — and only after every stats file of the run
//! is written. A crash in between leaves the old checkpoint, so the next run recomputes
//! those windows and gets the same result: work may be repeated, never lost.
//!
//! ```json
//! {"version":1,"telemetry_prefix":"telemetry",
//!  "partitions":{"dt=2026-11-25/hour=16":["part-1764086700000-1a2b3c4d-00000.parquet"]}}
//! ```
//!
//! Names are grouped by hour partition and stored relative to the partition folder, so
//! the long common prefix is written once per hour rather than once per file. Files that
//! could not be read are never listed, so the next run tries them again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use telemetry::Partition;

/// The checkpoint format version this code reads and writes.
pub const CHECKPOINT_VERSION: u32 = 1;

/// The set of processed telemetry objects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version ([`CHECKPOINT_VERSION`]); another version is not trusted.
    pub version: u32,
    /// The telemetry prefix the names are relative to; a checkpoint written for another
    /// prefix is not trusted.
    pub telemetry_prefix: String,
    /// Partition path (`dt=YYYY-MM-DD/hour=HH`) → names (relative to the partition folder)
    /// of the objects already aggregated.
    pub partitions: BTreeMap<String, BTreeSet<String>>,
}

/// What was found at the checkpoint's location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// No checkpoint: the first run.
    Missing,
    /// A checkpoint this code can use.
    Valid(Checkpoint),
    /// A checkpoint that cannot be trusted (unparseable, another version or prefix); the
    /// rollup starts over from an empty one, which recomputes every window — always safe,
    /// since stats are derived from the telemetry alone.
    Unusable {
        /// Why it was not used.
        reason: String,
    },
}

impl Checkpoint {
    /// An empty checkpoint for telemetry under `telemetry_prefix`.
    pub fn new(telemetry_prefix: &str) -> Self {
        Self {
            version: CHECKPOINT_VERSION,
            telemetry_prefix: telemetry_prefix.to_string(),
            partitions: BTreeMap::new(),
        }
    }

    /// True when the object `name` of `partition` has been aggregated.
    pub fn contains(&self, partition: &Partition, name: &str) -> bool {
        self.partitions
            .get(&partition.path())
            .is_some_and(|names| names.contains(name))
    }

    /// Records the object `name` of `partition` as aggregated.
    pub fn insert(&mut self, partition: &Partition, name: &str) {
        self.partitions
            .entry(partition.path())
            .or_default()
            .insert(name.to_string());
    }

    /// Number of objects recorded.
    pub fn files(&self) -> usize {
        self.partitions.values().map(BTreeSet::len).sum()
    }
}

/// Reads the checkpoint at `path` for telemetry under `telemetry_prefix`.
///
/// A store error other than "not found" is returned as is: without knowing what was
/// processed the run cannot proceed, and the error is usually transient.
pub async fn load(
    store: &Arc<dyn ObjectStore>,
    path: &str,
    telemetry_prefix: &str,
) -> Result<Loaded, object_store::Error> {
    let bytes = match store.get(&Path::from(path)).await {
        Ok(got) => got.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => return Ok(Loaded::Missing),
        Err(e) => return Err(e),
    };
    let cp: Checkpoint = match serde_json::from_slice(&bytes) {
        Ok(cp) => cp,
        Err(e) => {
            return Ok(Loaded::Unusable {
                reason: format!("{path} is not a valid checkpoint: {e}"),
            });
        }
    };
    if cp.version != CHECKPOINT_VERSION {
        return Ok(Loaded::Unusable {
            reason: format!(
                "{path} has version {}, this code reads version {CHECKPOINT_VERSION}",
                cp.version
            ),
        });
    }
    let prefix = telemetry_prefix.trim_matches('/');
    if cp.telemetry_prefix != prefix {
        return Ok(Loaded::Unusable {
            reason: format!(
                "{path} was written for telemetry prefix {:?}, not {prefix:?}",
                cp.telemetry_prefix
            ),
        });
    }
    Ok(Loaded::Valid(cp))
}

/// Replaces the checkpoint at `path` with a single put.
pub async fn save(
    store: &Arc<dyn ObjectStore>,
    path: &str,
    checkpoint: &Checkpoint,
) -> Result<(), object_store::Error> {
    let json = serde_json::to_vec(checkpoint).map_err(|e| object_store::Error::Generic {
        store: "checkpoint",
        source: Box::new(e),
    })?;
    store.put(&Path::from(path), PutPayload::from(json)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn a_saved_checkpoint_loads_back_and_a_foreign_one_is_not_trusted() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = "stats/_checkpoint/rollup.json";
        assert_eq!(
            load(&store, path, "telemetry").await.unwrap(),
            Loaded::Missing
        );

        let mut cp = Checkpoint::new("telemetry");
        let p = Partition::of_millis(0);
        cp.insert(&p, "a.parquet");
        save(&store, path, &cp).await.unwrap();
        assert!(cp.contains(&p, "a.parquet") && !cp.contains(&p, "b.parquet"));
        assert_eq!(
            load(&store, path, "telemetry").await.unwrap(),
            Loaded::Valid(cp.clone())
        );
        assert!(matches!(
            load(&store, path, "other").await.unwrap(),
            Loaded::Unusable { .. }
        ));

        store
            .put(&Path::from(path), PutPayload::from_static(b"{not json"))
            .await
            .unwrap();
        let Loaded::Unusable { reason } = load(&store, path, "telemetry").await.unwrap() else {
            panic!("a corrupt checkpoint was trusted");
        };
        assert!(reason.contains("not a valid checkpoint"), "{reason}");
    }
}
