//! A crash switch for the kill-and-rerun tests: with `IOTPIPE_CRASH_AFTER_WRITES=N` in the
//! environment, the stack's object store aborts the process right after its N-th completed
//! write (a put, a completed multipart upload, a copy or a delete), before whoever wrote
//! learns that it succeeded — the worst moment for a crash, since the write is durable and
//! nothing that follows it is.
//!
//! `abort` ends the process like `SIGKILL` does for what matters here: no destructor, no
//! flush, no buffered writer closed. Unset (the default), the store is not wrapped at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

/// The environment variable: abort after this many completed writes (a positive integer).
pub const CRASH_AFTER_WRITES_ENV: &str = "IOTPIPE_CRASH_AFTER_WRITES";

/// `store`, wrapped so that it crashes after the number of writes the environment names,
/// or `store` itself when [`CRASH_AFTER_WRITES_ENV`] is unset.
///
/// # Errors
/// When the variable is set to something other than a positive integer.
pub fn from_env(store: Arc<dyn ObjectStore>) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let Ok(value) = std::env::var(CRASH_AFTER_WRITES_ENV) else {
        return Ok(store);
    };
    let after: u64 = value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
        anyhow::anyhow!(
            "{CRASH_AFTER_WRITES_ENV}={value:?}: give a positive number of writes (or unset \
                 it: it exists only to test crashes)"
        )
    })?;
    tracing::warn!(
        after,
        "{CRASH_AFTER_WRITES_ENV} is set: this run will abort"
    );
    Ok(Arc::new(CrashingStore {
        inner: store,
        switch: Arc::new(Switch {
            after,
            done: AtomicU64::new(0),
        }),
    }))
}

/// Counts completed writes and aborts at the chosen one.
#[derive(Debug)]
struct Switch {
    /// Abort after this many writes.
    after: u64,
    /// Writes completed so far.
    done: AtomicU64,
}

impl Switch {
    /// One write completed: abort if it was the chosen one.
    fn written(&self, what: &str, location: &Path) {
        let n = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.after {
            eprintln!("{CRASH_AFTER_WRITES_ENV}: aborting after write {n} ({what} {location})");
            std::process::abort();
        }
    }
}

/// An object store that aborts the process after a chosen number of writes.
#[derive(Debug)]
struct CrashingStore {
    /// The store that does the work.
    inner: Arc<dyn ObjectStore>,
    /// The shared write counter.
    switch: Arc<Switch>,
}

impl std::fmt::Display for CrashingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CrashingStore({})", self.inner)
    }
}

/// A multipart upload whose completion counts as one write.
#[derive(Debug)]
struct CrashingUpload {
    inner: Box<dyn MultipartUpload>,
    location: Path,
    switch: Arc<Switch>,
}

#[async_trait::async_trait]
impl MultipartUpload for CrashingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let r = self.inner.complete().await?;
        self.switch.written("multipart", &self.location);
        Ok(r)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[async_trait::async_trait]
impl ObjectStore for CrashingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let r = self.inner.put_opts(location, payload, opts).await?;
        self.switch.written("put", location);
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CrashingUpload {
            inner,
            location: location.clone(),
            switch: self.switch.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let switch = self.switch.clone();
        self.inner
            .delete_stream(locations)
            .map(move |r| {
                if let Ok(p) = &r {
                    switch.written("delete", p);
                }
                r
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
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
        self.switch.written("copy", to);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_below_the_chosen_one_pass_through() {
        let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let store = CrashingStore {
            inner: inner.clone(),
            switch: Arc::new(Switch {
                after: 3,
                done: AtomicU64::new(0),
            }),
        };
        use object_store::ObjectStoreExt;
        store.put(&Path::from("a"), "1".into()).await.unwrap();
        store.put(&Path::from("b"), "2".into()).await.unwrap();
        assert_eq!(store.switch.done.load(Ordering::SeqCst), 2);
        assert!(inner.head(&Path::from("b")).await.is_ok());
    }
}
