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

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};

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
        Arc::new(SyncedLocalStore::new(dir)?)
    })
}

/// [`LocalFileSystem`] with every write synced to disk before it answers (module doc).
#[derive(Debug, Clone)]
pub struct SyncedLocalStore {
    inner: Arc<LocalFileSystem>,
}

impl SyncedLocalStore {
    /// The store rooted at `dir` (which must exist).
    ///
    /// # Errors
    /// When `dir` cannot be canonicalised (it does not exist).
    pub fn new(dir: &std::path::Path) -> object_store::Result<Self> {
        Ok(Self {
            inner: Arc::new(LocalFileSystem::new_with_prefix(dir)?),
        })
    }

    /// Syncs the file at `location` and its directory (the rename that put it there).
    async fn sync(&self, location: &Path) -> object_store::Result<()> {
        let file = self.inner.path_to_filesystem(location)?;
        sync_file_and_dir(file).await
    }
}

async fn sync_file_and_dir(file: PathBuf) -> object_store::Result<()> {
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

impl std::fmt::Display for SyncedLocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Synced({})", self.inner)
    }
}

/// A multipart upload that syncs the object when it completes.
#[derive(Debug)]
struct SyncedUpload {
    inner: Box<dyn MultipartUpload>,
    file: PathBuf,
}

#[async_trait]
impl MultipartUpload for SyncedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let result = self.inner.complete().await?;
        sync_file_and_dir(self.file.clone()).await?;
        Ok(result)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for SyncedLocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let result = self.inner.put_opts(location, payload, opts).await?;
        self.sync(location).await?;
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let file = self.inner.path_to_filesystem(location)?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(SyncedUpload { inner, file }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        self.sync(to).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        self.sync(to).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt as _;

    #[tokio::test]
    async fn it_reads_back_what_it_wrote_every_way() {
        let dir = tempfile::tempdir().unwrap();
        let store = SyncedLocalStore::new(dir.path()).unwrap();
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
