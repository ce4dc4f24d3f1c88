//! An object store that runs a hook after each write completes: [`AfterWrite`]. What
//! [`crate::synced`] (sync the file to disk) and the kill-and-rerun tests' crash switch
//! (`local::crash`: abort the process) are built on.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};

/// Which write completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// A put.
    Put,
    /// A completed multipart upload.
    Multipart,
    /// A copy (the hook gets the destination).
    Copy,
    /// A rename (the hook gets the destination).
    Rename,
    /// A delete.
    Delete,
}

impl Write {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Multipart => "multipart",
            Self::Copy => "copy",
            Self::Rename => "rename",
            Self::Delete => "delete",
        }
    }
}

/// What runs after each completed write, before the writer learns that it succeeded.
#[async_trait]
pub trait WriteHook: Debug + Send + Sync + 'static {
    /// A put, multipart upload, copy or rename of `location` completed; an error fails it.
    async fn written(&self, write: Write, location: &Path) -> object_store::Result<()>;

    /// A delete of `location` completed (deletes are streamed: this hook cannot fail them).
    fn deleted(&self, location: &Path);
}

/// `inner` with `hook` run after each completed write; reads and lists pass through.
#[derive(Debug)]
pub struct AfterWrite<H> {
    inner: Arc<dyn ObjectStore>,
    hook: Arc<H>,
}

impl<H: WriteHook> AfterWrite<H> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, hook: H) -> Self {
        Self {
            inner,
            hook: Arc::new(hook),
        }
    }

    /// The hook.
    pub fn hook(&self) -> &H {
        &self.hook
    }
}

impl<H> std::fmt::Display for AfterWrite<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AfterWrite({})", self.inner)
    }
}

/// A multipart upload whose completion runs the hook.
#[derive(Debug)]
struct Upload<H> {
    inner: Box<dyn MultipartUpload>,
    location: Path,
    hook: Arc<H>,
}

#[async_trait]
impl<H: WriteHook> MultipartUpload for Upload<H> {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let r = self.inner.complete().await?;
        self.hook.written(Write::Multipart, &self.location).await?;
        Ok(r)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl<H: WriteHook> ObjectStore for AfterWrite<H> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let r = self.inner.put_opts(location, payload, opts).await?;
        self.hook.written(Write::Put, location).await?;
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(Upload {
            inner,
            location: location.clone(),
            hook: self.hook.clone(),
        }))
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
        let hook = self.hook.clone();
        self.inner
            .delete_stream(locations)
            .map(move |r| {
                if let Ok(p) = &r {
                    hook.deleted(p);
                }
                r
            })
            .boxed()
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
        self.hook.written(Write::Copy, to).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        self.hook.written(Write::Rename, to).await
    }
}
