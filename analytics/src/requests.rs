//! Counting a run's object-store requests the way S3 bills them: [`CountingStore`] wraps
//! any [`ObjectStore`] and counts LIST, GET (HEAD included: S3 bills it as a GET-class
//! request), PUT (COPY and multipart uploads included: PUT-class) and DELETE requests.
//!
//! A listing is counted per page of 1,000 keys, as `ListObjectsV2` returns them; a
//! multipart upload as one PUT (its parts are not counted: the rollup's objects are
//! small). The benchmark `analytics/examples/rollup_incremental.rs` uses it to show
//! that an incremental run's requests do not grow with the deployment's history.
//!
//! Made with [`CountingStore::keeping_writes`], it also keeps the keys written and deleted,
//! in order ([`CountingStore::writes`]): what a test reads to tell in which order a run
//! stored and released things. (Only then: the list grows with every write.)

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use serde::Serialize;

/// Keys per `ListObjectsV2` page: a listing of more keys is several billed requests.
pub const LIST_PAGE_KEYS: u64 = 1000;

/// Requests counted so far, by S3 request class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    /// LIST requests (pages of up to [`LIST_PAGE_KEYS`] keys).
    pub list: u64,
    /// GET and HEAD requests.
    pub get: u64,
    /// PUT, COPY and multipart-upload requests.
    pub put: u64,
    /// DELETE requests (one per object).
    pub delete: u64,
}

#[derive(Debug, Default)]
struct Counters {
    list: AtomicU64,
    get: AtomicU64,
    put: AtomicU64,
    delete: AtomicU64,
    /// The keys written, when kept.
    writes: Option<Mutex<Vec<Written>>>,
}

/// A key a [`CountingStore`] was asked to write or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// A PUT (also a multipart upload's start, or a COPY's destination).
    Put(String),
    /// A DELETE.
    Delete(String),
}

/// An [`ObjectStore`] that forwards every call to `inner` and counts it.
#[derive(Debug, Clone)]
pub struct CountingStore {
    /// The store the requests go to.
    inner: Arc<dyn ObjectStore>,
    /// Shared with the clones, so a caller keeps reading the counts of a store it handed on.
    counts: Arc<Counters>,
}

impl CountingStore {
    /// Wraps `inner`, with every count at zero.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            counts: Arc::default(),
        }
    }

    /// The requests counted since creation or the last [`reset`](Self::reset).
    pub fn counts(&self) -> RequestCounts {
        let c = &self.counts;
        RequestCounts {
            list: c.list.load(Ordering::Relaxed),
            get: c.get.load(Ordering::Relaxed),
            put: c.put.load(Ordering::Relaxed),
            delete: c.delete.load(Ordering::Relaxed),
        }
    }

    /// Wraps `inner` like [`CountingStore::new`], and also keeps every key written or
    /// deleted, in order ([`CountingStore::writes`]).
    pub fn keeping_writes(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            counts: Arc::new(Counters {
                writes: Some(Mutex::default()),
                ..Counters::default()
            }),
        }
    }

    /// Sets every count back to zero, and forgets the writes.
    pub fn reset(&self) {
        let c = &self.counts;
        for n in [&c.list, &c.get, &c.put, &c.delete] {
            n.store(0, Ordering::Relaxed);
        }
        if let Some(writes) = &c.writes {
            writes.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    /// The keys written and deleted since creation or the last [`reset`](Self::reset), in
    /// the order they were asked for; empty unless made with
    /// [`CountingStore::keeping_writes`].
    pub fn writes(&self) -> Vec<Written> {
        self.counts.writes.as_ref().map_or_else(Vec::new, |w| {
            w.lock().unwrap_or_else(|e| e.into_inner()).clone()
        })
    }
}

fn note(counts: &Counters, written: Written) {
    if let Some(writes) = &counts.writes {
        writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(written);
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountingStore({})", self.inner)
    }
}

fn add(n: &AtomicU64) {
    n.fetch_add(1, Ordering::Relaxed);
}

#[async_trait::async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        add(&self.counts.put);
        note(&self.counts, Written::Put(location.to_string()));
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        add(&self.counts.put);
        note(&self.counts, Written::Put(location.to_string()));
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        add(&self.counts.get);
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let counts = self.counts.clone();
        let counted = locations
            .inspect(move |l| {
                if let Ok(path) = l {
                    add(&counts.delete);
                    note(&counts, Written::Delete(path.to_string()));
                }
            })
            .boxed();
        self.inner.delete_stream(counted)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        // The first page is a request even when it is empty; then one per 1,000 keys.
        add(&self.counts.list);
        let counts = self.counts.clone();
        let mut seen = 0u64;
        self.inner
            .list(prefix)
            .inspect(move |_| {
                seen += 1;
                if seen > 1 && (seen - 1).is_multiple_of(LIST_PAGE_KEYS) {
                    add(&counts.list);
                }
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        add(&self.counts.list);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        add(&self.counts.put);
        note(&self.counts, Written::Put(to.to_string()));
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn each_request_class_is_counted_and_listings_by_page() {
        let store = CountingStore::keeping_writes(Arc::new(InMemory::new()));
        for i in 0..1001 {
            store
                .put(
                    &Path::from(format!("a/{i:04}")),
                    PutPayload::from_static(b"x"),
                )
                .await
                .unwrap();
        }
        store.get(&Path::from("a/0001")).await.unwrap();
        store.head(&Path::from("a/0002")).await.unwrap();
        let listed: Vec<_> = store.list(Some(&Path::from("a"))).collect().await;
        assert_eq!(listed.len(), 1001);
        store.list_with_delimiter(None).await.unwrap();
        store.delete(&Path::from("a/0003")).await.unwrap();
        assert_eq!(
            store.counts(),
            RequestCounts {
                list: 2 + 1,
                get: 2,
                put: 1001,
                delete: 1,
            }
        );
        let writes = store.writes();
        assert_eq!(writes.len(), 1002);
        assert_eq!(writes[1], Written::Put("a/0001".into()));
        assert_eq!(writes[1001], Written::Delete("a/0003".into()));
        store.reset();
        assert_eq!(store.counts(), RequestCounts::default());
        assert!(store.writes().is_empty());
        // Counting alone keeps no list that grows with every write.
        let counting_only = CountingStore::new(Arc::new(InMemory::new()));
        let key = Path::from("a");
        counting_only
            .put(&key, PutPayload::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(counting_only.counts().put, 1);
        assert!(counting_only.writes().is_empty());
    }
}
