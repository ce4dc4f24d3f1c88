//! Per-unit state: which telemetry objects a unit's stats file was computed from.
//!
//! One small JSON object per unit (`stats/_state/window=1m/dt=…/hour=…/part-BBBB-of-NNNN.json`),
//! written by the unit's lease holder after its stats file, with a single put. A crash in
//! between leaves the old state, so the next run recomputes the unit and gets the same
//! result: work may be repeated, never lost. Its size is bounded by one hour's objects,
//! whatever the age of the deployment — there is no global checkpoint that grows.
//!
//! ```json
//! {"version":2,"objects":["part-1764086700000-1a2b3c4d-00000.parquet"]}
//! ```
//!
//! Names are relative to the hour's telemetry folder. Objects that could not be read are
//! never listed, so the next run tries them again.

use std::collections::BTreeSet;
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

/// The state format version this code reads and writes.
pub const STATE_VERSION: u32 = 2;

/// What a unit has aggregated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitState {
    /// Format version ([`STATE_VERSION`]); another version is not trusted.
    pub version: u32,
    /// Names (relative to the hour's telemetry folder) of the objects the unit's stats
    /// file was computed from.
    pub objects: BTreeSet<String>,
}

impl Default for UnitState {
    fn default() -> Self {
        Self::new()
    }
}

impl UnitState {
    /// An empty state: nothing aggregated.
    pub fn new() -> Self {
        Self {
            version: STATE_VERSION,
            objects: BTreeSet::new(),
        }
    }
}

/// Reads the state at `path`. Missing, unparseable or of another version: an empty state
/// (the unit is recomputed from its telemetry, which is always safe). A store error other
/// than "not found" is returned: without the state the unit cannot be judged.
pub async fn load(
    store: &Arc<dyn ObjectStore>,
    path: &str,
) -> Result<UnitState, object_store::Error> {
    let bytes = match store.get(&Path::from(path)).await {
        Ok(got) => got.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => return Ok(UnitState::new()),
        Err(e) => return Err(e),
    };
    Ok(serde_json::from_slice::<UnitState>(&bytes)
        .ok()
        .filter(|s| s.version == STATE_VERSION)
        .unwrap_or_default())
}

/// Replaces the state at `path` with a single put.
pub async fn save(
    store: &Arc<dyn ObjectStore>,
    path: &str,
    state: &UnitState,
) -> Result<(), object_store::Error> {
    let json = serde_json::to_vec(state).map_err(|e| object_store::Error::Generic {
        store: "state",
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
    async fn a_saved_state_loads_back_and_a_foreign_one_counts_as_empty() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = "stats/_state/window=1m/dt=2026-11-25/hour=16/part-0000-of-0001.json";
        assert_eq!(load(&store, path).await.unwrap(), UnitState::new());
        let mut state = UnitState::new();
        state.objects.insert("a.parquet".into());
        save(&store, path, &state).await.unwrap();
        assert_eq!(load(&store, path).await.unwrap(), state);
        for foreign in [&b"{not json"[..], br#"{"version":1,"objects":["a"]}"#] {
            store
                .put(&Path::from(path), PutPayload::from(foreign.to_vec()))
                .await
                .unwrap();
            assert_eq!(load(&store, path).await.unwrap(), UnitState::new());
        }
    }
}
