//! One writer per unit: a lease taken with a conditional create.
//!
//! A lease is an object `…/_lease/…/part-BBBB-of-NNNN/gen-GGGGGGGGGG` holding its owner
//! and its expiry (epoch ms). To take a unit, a worker lists the unit's lease folder
//! (a handful of objects at most) and:
//! - if the highest generation has not expired, the unit is *busy*: someone else works on
//!   it, and the worker leaves it (the planner offers it again later);
//! - otherwise it creates generation `highest + 1` with [`PutMode::Create`] (S3
//!   `If-None-Match: *`; an atomic create-if-absent on the local file system and the
//!   in-memory store). Of two workers racing for the same generation exactly one
//!   succeeds; the other sees `AlreadyExists` and treats the unit as busy.
//!
//! Generations only grow while a lease object exists, so a worker whose lease expired can
//! never take it back by accident; the holder deletes older generations, and its own on
//! release. A worker checks [`Lease::check`] before each write: it stops writing once
//! less than [`SAFETY_MARGIN`] of its lease is left, so a writer whose lease a newer
//! worker may take has already stopped (clocks of Lambda hosts agree to far better than
//! the margin). A crashed worker's lease simply expires: its unit is taken again after
//! the lease's time to live — or at once when the lease names a process of this machine
//! that has ended (a killed `iotpipe`; see `Holder`).
//!
//! `PutMode::Update` (S3 `If-Match`) would let the state object itself serve as the lock,
//! but `object_store`'s local file system does not support it; a create-only lease works
//! on every store the rollup runs on.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

/// Time a writer keeps in hand: it stops writing when its lease has less than this left
/// (or a fifth of the lease's time to live, when that is shorter).
pub const SAFETY_MARGIN: Duration = Duration::from_secs(10);

/// What a lease object holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseBody {
    /// Who holds it (for people reading the store).
    owner: String,
    /// When it expires, epoch milliseconds.
    expires_at_ms: i64,
    /// The holding process, when the platform can name it (Linux): a lease whose holder
    /// is known dead is free before it expires. Absent in leases of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    holder: Option<Holder>,
}

/// A process, named so that another process can tell for sure that it has ended: same
/// kernel boot and PID namespace, and no such PID. Lambda sandboxes (each its own microVM)
/// and containers never match one another, so there the lease's time to live decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Holder {
    /// `/proc/sys/kernel/random/boot_id`.
    boot_id: String,
    /// The target of `/proc/self/ns/pid`.
    pid_ns: String,
    /// The process id.
    pid: u32,
}

impl Holder {
    /// This process, or `None` where `/proc` does not say.
    fn this_process() -> Option<Self> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let pid_ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
        Some(Self {
            boot_id: boot_id.trim().to_string(),
            pid_ns: pid_ns.to_string_lossy().into_owned(),
            pid: std::process::id(),
        })
    }

    /// Whether this holder has certainly ended: it ran on this boot, in this PID
    /// namespace, and its PID is gone (a killed `iotpipe` whose lease would otherwise
    /// block its unit for the whole time to live). A reused PID counts as alive.
    fn is_dead(&self) -> bool {
        Self::this_process().is_some_and(|me| {
            me.boot_id == self.boot_id
                && me.pid_ns == self.pid_ns
                && me.pid != self.pid
                && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
        })
    }
}

/// A held lease; release it with [`Lease::release`].
#[derive(Debug)]
pub struct Lease {
    store: Arc<dyn ObjectStore>,
    path: Path,
    expires: SystemTime,
    /// [`SAFETY_MARGIN`], or a fifth of the time to live when shorter.
    margin: Duration,
}

/// Why a lease could not be taken (other than the unit being busy).
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The store failed.
    #[error("lease {path}: {source}")]
    Store {
        /// The lease folder or object.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// The lease expired (or nearly) before the work was written: the writes were not
    /// made, and the unit is retried by a later run.
    #[error(
        "lease {path} expired before the unit's results were written; raise the lease's time \
         to live (IOTPIPE_LEASE_TTL / --lease-ttl) above the slowest unit, or use more buckets"
    )]
    Expired {
        /// The lease object.
        path: String,
    },
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The generation number of a lease object name `gen-GGGGGGGGGG`.
fn generation(location: &Path) -> Option<u64> {
    location.filename()?.strip_prefix("gen-")?.parse().ok()
}

/// Tries to take the lease of the unit whose lease folder is `prefix`, for `ttl`.
/// `Ok(None)` when another worker holds it.
pub async fn acquire(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    owner: &str,
    ttl: Duration,
) -> Result<Option<Lease>, LeaseError> {
    let err = |source| LeaseError::Store {
        path: prefix.to_string(),
        source,
    };
    let folder = Path::from(prefix);
    let listed: Vec<_> = store.list(Some(&folder)).try_collect().await.map_err(err)?;
    let mut gens: Vec<(u64, Path)> = listed
        .into_iter()
        .filter_map(|m| Some((generation(&m.location)?, m.location)))
        .collect();
    gens.sort();
    let now = SystemTime::now();
    let next = match gens.last() {
        None => 1,
        Some((g, path)) => {
            let body = match store.get(path).await {
                Ok(got) => got.bytes().await.map_err(err)?,
                // Released between the listing and now: free, at a newer generation.
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(err(e)),
            };
            // An unreadable lease is treated as expired by its modification time rule:
            // it cannot say when it ends, and blocking the unit forever is worse.
            let (expires, holder) = serde_json::from_slice::<LeaseBody>(&body)
                .map(|b| (b.expires_at_ms, b.holder))
                .unwrap_or((0, None));
            let holder_dead = holder.as_ref().is_some_and(Holder::is_dead);
            if expires > millis(now) && !holder_dead {
                return Ok(None);
            }
            if holder_dead {
                tracing::info!(lease = %path, "taking over the lease of a process that ended");
            }
            g + 1
        }
    };
    let expires = now + ttl;
    let body = LeaseBody {
        owner: owner.to_string(),
        expires_at_ms: millis(expires),
        holder: Holder::this_process(),
    };
    let path = Path::from(format!("{prefix}/gen-{next:010}"));
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let create = PutOptions::from(PutMode::Create);
    match store.put_opts(&path, PutPayload::from(json), create).await {
        Ok(_) => {}
        Err(object_store::Error::AlreadyExists { .. }) => return Ok(None),
        Err(e) => return Err(err(e)),
    }
    // Older generations are dead (expired, or released and gone): tidy them.
    for (_, old) in gens {
        if let Err(e) = store.delete(&old).await
            && !matches!(e, object_store::Error::NotFound { .. })
        {
            return Err(err(e));
        }
    }
    Ok(Some(Lease {
        store: store.clone(),
        path,
        expires,
        margin: SAFETY_MARGIN.min(ttl / 5),
    }))
}

impl Lease {
    /// `Ok` while the lease has more than its margin ([`SAFETY_MARGIN`]) left: call it right before
    /// each write.
    pub fn check(&self) -> Result<(), LeaseError> {
        if SystemTime::now() + self.margin < self.expires {
            Ok(())
        } else {
            Err(LeaseError::Expired {
                path: self.path.to_string(),
            })
        }
    }

    /// Gives the lease up, so that the unit can be taken at once.
    pub async fn release(self) -> Result<(), LeaseError> {
        match self.store.delete(&self.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(LeaseError::Store {
                path: self.path.to_string(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;

    use super::*;

    async fn one_holder_at_a_time(store: Arc<dyn ObjectStore>) {
        let ttl = Duration::from_secs(60);
        let a = acquire(&store, "l/u", "a", ttl).await.unwrap().unwrap();
        assert!(acquire(&store, "l/u", "b", ttl).await.unwrap().is_none());
        a.check().unwrap();
        a.release().await.unwrap();
        let b = acquire(&store, "l/u", "b", ttl).await.unwrap().unwrap();
        assert!(acquire(&store, "l/u", "c", ttl).await.unwrap().is_none());
        b.release().await.unwrap();

        // An expired lease is taken over at the next generation, and its holder knows.
        let short = acquire(&store, "l/u", "slow", Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert!(short.check().is_err());
        let next = acquire(&store, "l/u", "d", ttl).await.unwrap().unwrap();
        assert!(
            next.path.as_ref().ends_with("gen-0000000002"),
            "{}",
            next.path
        );
        assert!(acquire(&store, "l/u", "e", ttl).await.unwrap().is_none());
    }

    /// Writes an unexpired lease held by process `pid` of this machine.
    async fn lease_of(store: &Arc<dyn ObjectStore>, pid: u32) {
        let mut holder = Holder::this_process().expect("Linux /proc");
        holder.pid = pid;
        let body = LeaseBody {
            owner: format!("pid {pid}"),
            expires_at_ms: millis(SystemTime::now() + Duration::from_secs(900)),
            holder: Some(holder),
        };
        let path = Path::from("l/u/gen-0000000001");
        store
            .put(&path, serde_json::to_vec(&body).unwrap().into())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn the_unexpired_lease_of_a_process_that_ended_is_taken_over_and_a_live_ones_is_not() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        lease_of(&store, child.id()).await;
        let ttl = Duration::from_secs(60);
        assert!(
            acquire(&store, "l/u", "b", ttl).await.unwrap().is_none(),
            "its holder is alive"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let taken = acquire(&store, "l/u", "b", ttl).await.unwrap().unwrap();
        assert!(taken.path.as_ref().ends_with("gen-0000000002"));
    }

    #[tokio::test]
    async fn a_lease_has_one_holder_on_the_in_memory_store() {
        one_holder_at_a_time(Arc::new(InMemory::new())).await;
    }

    #[tokio::test]
    async fn a_lease_has_one_holder_on_the_local_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        one_holder_at_a_time(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn of_many_racing_workers_exactly_one_takes_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    acquire(&store, "l/u", &format!("w{i}"), Duration::from_secs(60))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut held = 0;
        for t in tasks {
            held += usize::from(t.await.unwrap().is_some());
        }
        assert_eq!(held, 1);
    }
}
