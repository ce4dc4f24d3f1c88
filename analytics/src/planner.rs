//! The planner: which units need work.
//!
//! 1. Find the hour partitions with new data: from the [pending markers](crate::pending)
//!    (the objects written since they were last rolled up), or, on a full scan, by
//!    listing every telemetry object. A store's first run always scans in full (no
//!    `_initialized` object under the state prefix yet), which also picks up telemetry
//!    written before the markers existed.
//! 2. For each such partition, oldest first, list its objects (one hour's folder) and
//!    load the state of each of its units: a unit whose state does not name exactly the
//!    listed objects needs work.
//!
//! The cost is the new data's partitions, not the history. The planner never writes stats:
//! it hands units to workers ([`crate::worker::run_hour`]), in-process
//! ([`crate::rollup::run_rollup`], `iotpipe rollup --workers N`) or as queue messages
//! ([`crate::fanout`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use telemetry::Partition;

use crate::config::RollupConfig;
use crate::io;
use crate::pending;
use crate::rollup::RollupError;
use crate::state;
use crate::units::Unit;

/// The name of the object, under the state prefix, that says a full scan has completed.
pub const INITIALIZED: &str = "_initialized";

/// The work found by [`plan`].
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Whether every telemetry object was listed (rather than only the markers).
    pub full_scan: bool,
    /// Telemetry objects listed in the partitions looked at.
    pub files_scanned: usize,
    /// The partitions looked at, oldest first, with their units that need work.
    pub partitions: Vec<PartitionPlan>,
}

/// One hour partition of a [`Plan`].
#[derive(Debug, Clone)]
pub struct PartitionPlan {
    /// The hour.
    pub partition: Partition,
    /// Its units whose state is behind the listed objects.
    pub units: Vec<Unit>,
    /// Its pending markers, deleted once all of its units are done.
    pub markers: Vec<Path>,
}

impl Plan {
    /// Every unit that needs work, oldest partition first.
    pub fn units(&self) -> impl Iterator<Item = &Unit> {
        self.partitions.iter().flat_map(|p| &p.units)
    }
}

/// Finds the units that need work: see the [module documentation](self).
pub async fn plan(store: &Arc<dyn ObjectStore>, cfg: &RollupConfig) -> Result<Plan, RollupError> {
    let prefix = cfg.telemetry_prefix.trim_matches('/');
    let initialized = Path::from(format!("{}/{INITIALIZED}", cfg.state_prefix));
    let full_scan = cfg.full_scan
        || match store.head(&initialized).await {
            Ok(_) => false,
            Err(object_store::Error::NotFound { .. }) => true,
            Err(source) => {
                return Err(RollupError::ReadState {
                    path: initialized.to_string(),
                    source,
                });
            }
        };

    let mut touched: BTreeMap<Partition, Vec<Path>> = BTreeMap::new();
    let markers = pending::list(store, &cfg.pending_prefix)
        .await
        .map_err(|source| RollupError::List {
            prefix: cfg.pending_prefix.clone(),
            source,
        })?;
    for (meta, key) in markers {
        match io::telemetry_object(prefix, &key) {
            Some((partition, _)) => touched.entry(partition).or_default().push(meta.location),
            // Not a marker of this telemetry prefix: not ours to delete.
            None => continue,
        }
    }
    let mut files_scanned = 0;
    let mut listed: BTreeMap<Partition, BTreeSet<String>> = BTreeMap::new();
    if full_scan {
        let files =
            io::list_telemetry(store, prefix)
                .await
                .map_err(|source| RollupError::List {
                    prefix: prefix.to_string(),
                    source,
                })?;
        for f in files {
            listed.entry(f.partition).or_default().insert(f.name);
        }
        for p in listed.keys() {
            touched.entry(p.clone()).or_default();
        }
    }

    let mut partitions = Vec::with_capacity(touched.len());
    for (partition, markers) in touched {
        let names = match listed.remove(&partition) {
            Some(names) => names,
            None => partition_names(store, prefix, &partition).await?,
        };
        files_scanned += names.len();
        let units = units_behind(store, cfg, &partition, &names).await?;
        partitions.push(PartitionPlan {
            partition,
            units,
            markers,
        });
    }
    Ok(Plan {
        full_scan,
        files_scanned,
        partitions,
    })
}

/// The units of `partition` whose state does not name exactly `names` (the hour's objects).
async fn units_behind(
    store: &Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
    partition: &Partition,
    names: &BTreeSet<String>,
) -> Result<Vec<Unit>, RollupError> {
    let mut units = Vec::new();
    for unit in Unit::all_of(partition, cfg.buckets) {
        let path = unit.state_path(cfg);
        let st = state::load(store, &path)
            .await
            .map_err(|source| RollupError::ReadState { path, source })?;
        if &st.objects != names {
            units.push(unit);
        }
    }
    Ok(units)
}

/// Whether every unit of `partition` has aggregated exactly the hour's objects as listed
/// now.
pub async fn hour_up_to_date(
    store: &Arc<dyn ObjectStore>,
    cfg: &RollupConfig,
    partition: &Partition,
) -> Result<bool, RollupError> {
    let prefix = cfg.telemetry_prefix.trim_matches('/');
    let names: BTreeSet<String> = partition_names(store, prefix, partition).await?;
    Ok(units_behind(store, cfg, partition, &names)
        .await?
        .is_empty())
}

/// The names of the telemetry objects of `partition` under `prefix` (one listing).
async fn partition_names(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    partition: &Partition,
) -> Result<BTreeSet<String>, RollupError> {
    Ok(io::list_partition(store, prefix, partition)
        .await
        .map_err(|source| RollupError::List {
            prefix: format!("{prefix}/{}", partition.path()),
            source,
        })?
        .into_iter()
        .map(|f| f.name)
        .collect())
}
