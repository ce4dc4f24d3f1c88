//! A local-directory store whose writes are on disk when they answer: [`SyncedLocalStore`].
//!
//! `object_store`'s `LocalFileSystem` writes a file and renames it into place, but never
//! calls `fsync`: after a power cut (not a killed process: the page cache survives that),
//! a checkpoint may be on disk while the Parquet file it vouches for is not — a Kinesis
//! checkpoint, a rollup state, or the journal's checkpoint of `iotpipe up` would then skip
//! data that is gone. Here every put, completed multipart upload, copy and rename syncs the
//! file and its directory before it answers, so anything written after it (a checkpoint)
//! can only be on disk if it is.
//!
//! The price is one `fsync` of the file and one of its directory per object (on the
//! development VM ~7 ms each: `iotpipe replay` of 1 M messages, 70 objects plus leases and
//! markers, took 0.7–1.1 s longer). [`FSYNC_ENV`]`=0` turns it off.

use std::sync::Arc;

use async_trait::async_trait;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

use crate::after_write::{AfterWrite, Write, WriteHook};

/// Set to `0` (or `off`, `false`) to open local directories without syncing: faster bulk
/// loads (`iotpipe replay` of an archive you keep) at the price of the power-cut guarantee.
pub const FSYNC_ENV: &str = "IOTPIPE_FSYNC";

/// The store of a local data directory: a [`SyncedLocalStore`], or a plain
/// [`LocalFileSystem`] when [`FSYNC_ENV`] turns syncing off.
///
/// # Errors
/// When `dir` cannot be canonicalised (it does not exist).
pub fn local_dir_store(dir: &std::path::Path) -> object_store::Result<Arc<dyn ObjectStore>> {
    let off = std::env::var(FSYNC_ENV).is_ok_and(|v| {
        matches!(
            v.to_ascii_lowercase().as_str(),
            "0" | "off" | "false" | "no"
        )
    });
    Ok(if off {
        Arc::new(LocalFileSystem::new_with_prefix(dir)?)
    } else {
        Arc::new(SyncedLocalStore::synced(dir)?)
    })
}

/// [`LocalFileSystem`] with every write synced to disk before it answers (module doc).
pub type SyncedLocalStore = AfterWrite<SyncToDisk>;

/// The hook of a [`SyncedLocalStore`]: syncs the written file and its directory.
#[derive(Debug)]
pub struct SyncToDisk {
    fs: Arc<LocalFileSystem>,
}

impl SyncedLocalStore {
    /// The store rooted at `dir` (which must exist).
    ///
    /// # Errors
    /// When `dir` cannot be canonicalised (it does not exist).
    pub fn synced(dir: &std::path::Path) -> object_store::Result<Self> {
        let fs = Arc::new(LocalFileSystem::new_with_prefix(dir)?);
        Ok(AfterWrite::new(fs.clone(), SyncToDisk { fs }))
    }
}

#[async_trait]
impl WriteHook for SyncToDisk {
    async fn written(&self, _: Write, location: &Path) -> object_store::Result<()> {
        let file = self.fs.path_to_filesystem(location)?;
        let path = file.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&file)?.sync_all()?;
            if let Some(dir) = file.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(|source| object_store::Error::Generic {
            store: "SyncedLocalStore",
            source: format!("cannot sync {} to disk: {source}", path.display()).into(),
        })
    }

    /// A delete needs no sync: a file that comes back after a power cut is one a rerun
    /// deletes again (a marker or a lease).
    fn deleted(&self, _: &Path) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt as _;
    use object_store::PutPayload;

    #[tokio::test]
    async fn it_reads_back_what_it_wrote_every_way() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SyncedLocalStore::synced(dir.path()).unwrap());
        let a = Path::from("x/a.json");
        store.put(&a, PutPayload::from("one")).await.unwrap();
        let mut up = store.put_multipart(&Path::from("x/b.bin")).await.unwrap();
        up.put_part(PutPayload::from("two")).await.unwrap();
        up.complete().await.unwrap();
        store.copy(&a, &Path::from("y/c.json")).await.unwrap();
        store
            .rename(&Path::from("y/c.json"), &Path::from("y/d.json"))
            .await
            .unwrap();
        let get = |p: &'static str| {
            let store = store.clone();
            async move {
                store
                    .get(&Path::from(p))
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
            }
        };
        assert_eq!(get("x/a.json").await, "one");
        assert_eq!(get("x/b.bin").await, "two");
        assert_eq!(get("y/d.json").await, "one");
        let listed: Vec<_> = store.list(None).try_collect().await.unwrap();
        assert_eq!(listed.len(), 3);
        assert_eq!(std::fs::read(dir.path().join("y/d.json")).unwrap(), b"one");
    }
}
