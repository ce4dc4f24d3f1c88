//! Opens the pipeline's data location — a local directory or an S3 bucket and prefix — as
//! an [`ObjectStore`] rooted there, so that every crate reads and writes the same relative
//! keys (`telemetry/dt=…`, `stats/…`, `quarantine/…`) wherever the data lives.
//!
//! S3 is configured the standard AWS way, from `AWS_*` environment variables: region
//! (`AWS_REGION` / `AWS_DEFAULT_REGION`, else a region the caller passes — the command
//! line's profile region — else `us-east-1`), credentials (static keys,
//! web identity, container or instance credentials) and `AWS_ENDPOINT_URL` (or
//! `AWS_ENDPOINT_URL_S3`) for an AWS-compatible server such as moto. An `http://` endpoint
//! is allowed without further settings, since it can only be a deliberate local server.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use futures::stream::{self, BoxStream, StreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, AwsCredentialProvider};
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// The URL scheme of an S3 location: `s3://bucket/prefix`.
pub const S3_SCHEME: &str = "s3://";

/// A location [`open_store`] accepts, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A local directory.
    Local(PathBuf),
    /// An S3 bucket, and a key prefix within it (empty: the bucket's root).
    S3 {
        /// The bucket's name.
        bucket: String,
        /// The key prefix, without leading or trailing slashes.
        prefix: Path,
    },
}

impl StoreLocation {
    /// Parses `url`: `s3://bucket` or `s3://bucket/prefix/…` for S3; a path without a
    /// scheme for a local directory. Other schemes are refused rather than taken for
    /// directory names.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        if url.is_empty() {
            return Err(StoreError::Empty);
        }
        if let Some(rest) = url.strip_prefix(S3_SCHEME) {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StoreError::MissingBucket { url: url.into() });
            }
            let prefix = Path::parse(prefix.trim_matches('/')).map_err(|source| {
                StoreError::InvalidPrefix {
                    url: url.into(),
                    source,
                }
            })?;
            return Ok(Self::S3 {
                bucket: bucket.into(),
                prefix,
            });
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(StoreError::UnsupportedScheme {
                url: url.into(),
                scheme: scheme.into(),
            });
        }
        Ok(Self::Local(PathBuf::from(url)))
    }
}

/// A data location that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The location is an empty string.
    #[error("the data location is empty: give a directory or s3://bucket/prefix")]
    Empty,
    /// A URL with a scheme other than `s3://`.
    #[error("{url}: unsupported scheme {scheme}:// (use a directory or s3://bucket/prefix)")]
    UnsupportedScheme {
        /// The location as given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// `s3://` without a bucket name.
    #[error("{url}: no bucket name (expected s3://bucket or s3://bucket/prefix)")]
    MissingBucket {
        /// The location as given.
        url: String,
    },
    /// The prefix is not a valid object path (e.g. an empty segment, `a//b`).
    #[error("{url}: invalid key prefix: {source}")]
    InvalidPrefix {
        /// The location as given.
        url: String,
        /// Why the prefix is invalid.
        #[source]
        source: object_store::path::Error,
    },
    /// The local directory could not be created.
    #[error("creating the data directory {path}: {source}")]
    CreateDirectory {
        /// The directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The object store could not be built (a local directory that cannot be opened, or
    /// an S3 configuration that is incomplete or contradictory).
    #[error("opening {url}: {source}")]
    Open {
        /// The location as given.
        url: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
}

/// Opens `url` (see [`StoreLocation::parse`]) as an object store whose keys are relative
/// to it, taking S3 settings from the process's `AWS_*` environment variables.
///
/// A local directory is created if it does not exist. Opening S3 makes no request: a
/// wrong bucket or missing credentials show up at the first read or write.
pub fn open_store(url: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
    open_store_with(url, process_env())
}

/// The process's environment variables that are valid UTF-8 (the S3 client's settings
/// are among them).
fn process_env() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
}

/// [`open_store`] with the `AWS_*` variables given instead of read from the process
/// environment (variables without the `AWS_` prefix, or that the S3 client does not
/// know, are ignored). Lets tests and callers with their own configuration avoid
/// changing the process environment.
pub fn open_store_with<I, K, V>(url: &str, aws_env: I) -> Result<Arc<dyn ObjectStore>, StoreError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: Into<String>,
{
    open(url, aws_env, None)
}

/// [`open_store`], with S3's credentials from `credentials` instead of object_store's own
/// chain (which reads no `~/.aws` profile): the command line passes the AWS SDK's.
/// `fallback_region` is S3's region when neither `AWS_REGION` nor `AWS_DEFAULT_REGION`
/// names one (the command line passes the profile's; without it, `us-east-1`).
pub fn open_store_with_credentials(
    url: &str,
    credentials: AwsCredentialProvider,
    fallback_region: Option<String>,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let env = with_fallback_region(process_env(), fallback_region);
    open(url, env, Some(credentials))
}

/// `aws_env`, then `region` as the last `AWS_DEFAULT_REGION`: object_store takes a default
/// region only when no variable before it set one, so `AWS_REGION` and
/// `AWS_DEFAULT_REGION` keep precedence.
fn with_fallback_region(
    aws_env: impl Iterator<Item = (String, String)>,
    region: Option<String>,
) -> impl Iterator<Item = (String, String)> {
    aws_env.chain(region.map(|r| ("AWS_DEFAULT_REGION".to_owned(), r)))
}

/// [`open_store_with`], with S3's credentials from `credentials` when given.
fn open<I, K, V>(
    url: &str,
    aws_env: I,
    credentials: Option<AwsCredentialProvider>,
) -> Result<Arc<dyn ObjectStore>, StoreError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: Into<String>,
{
    let open_err = |source| StoreError::Open {
        url: url.into(),
        source,
    };
    match StoreLocation::parse(url)? {
        StoreLocation::Local(dir) => {
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::CreateDirectory {
                path: dir.display().to_string(),
                source,
            })?;
            crate::synced::local_dir_store(&dir).map_err(open_err)
        }
        StoreLocation::S3 { bucket, prefix } => {
            let mut builder = s3_builder(aws_env);
            if let Some(credentials) = credentials {
                builder = builder.with_credentials(credentials);
            }
            let plain_http = [AmazonS3ConfigKey::S3Endpoint, AmazonS3ConfigKey::Endpoint]
                .iter()
                .filter_map(|k| builder.get_config_value(k))
                .any(|endpoint| endpoint.starts_with("http://"));
            let s3 = builder
                .with_bucket_name(bucket)
                .with_allow_http(plain_http)
                .build()
                .map_err(open_err)?;
            if prefix.as_ref().is_empty() {
                Ok(Arc::new(s3))
            } else {
                Ok(Arc::new(PrefixStore::new(s3, prefix)))
            }
        }
    }
}

/// An S3 client's builder configured from the `AWS_*` variables among `aws_env`, in
/// order (a later variable overrides an earlier one; `AWS_DEFAULT_REGION` only applies
/// when no region is set yet).
fn s3_builder<I, K, V>(aws_env: I) -> AmazonS3Builder
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: Into<String>,
{
    let mut builder = AmazonS3Builder::new();
    for (key, value) in aws_env {
        let key = key.as_ref();
        if !key.starts_with("AWS_") {
            continue;
        }
        // The same mapping `AmazonS3Builder::from_env` applies.
        if let Ok(k) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            builder = builder.with_config(k, value);
        }
    }
    builder
}

/// Opens `url` like [`open_store`], but builds an S3 client only at the first request.
///
/// The location is parsed at once (a bad URL is still refused here), the `AWS_*`
/// variables are read at once, and a local directory is opened at once. What is deferred
/// is building the S3 client, which is what costs at a Lambda cold start: its HTTPS client
/// loads the system's root certificates (on Debian, every file of `/etc/ssl/certs`). A
/// store that is rarely used — ingest's quarantine — should not pay that on every cold
/// start. A client that cannot be built makes each request fail with the reason.
pub fn open_store_lazy(url: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let aws_env = process_env().filter(|(k, _)| k.starts_with("AWS_"));
    open_store_lazy_with(url, aws_env)
}

/// [`open_store_lazy`] with the `AWS_*` variables given, as [`open_store_with`] takes them.
pub fn open_store_lazy_with<I, K, V>(
    url: &str,
    aws_env: I,
) -> Result<Arc<dyn ObjectStore>, StoreError>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: Into<String>,
{
    match StoreLocation::parse(url)? {
        StoreLocation::Local(_) => open_store_with(url, aws_env),
        StoreLocation::S3 { .. } => Ok(Arc::new(LazyStore::new(url, aws_env))),
    }
}

/// An S3 store built by [`open_store_with`] at its first use (see [`open_store_lazy`]).
/// Its `Debug` names the variables it holds, never their values: `aws_env` carries the
/// secret access key and session token.
struct LazyStore {
    url: String,
    aws_env: Vec<(String, String)>,
    inner: OnceLock<Result<Arc<dyn ObjectStore>, String>>,
}

impl LazyStore {
    fn new<I, K, V>(url: &str, aws_env: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        Self {
            url: url.to_owned(),
            aws_env: aws_env
                .into_iter()
                .map(|(k, v)| (k.as_ref().to_owned(), v.into()))
                .collect(),
            inner: OnceLock::new(),
        }
    }

    fn store(&self) -> object_store::Result<&Arc<dyn ObjectStore>> {
        self.inner
            .get_or_init(|| {
                open_store_with(&self.url, self.aws_env.iter().cloned()).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|reason| object_store::Error::Generic {
                store: "S3",
                source: reason.clone().into(),
            })
    }
}

impl std::fmt::Debug for LazyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.aws_env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("LazyStore")
            .field("url", &self.url)
            .field("aws_env", &names)
            .field("built", &self.inner.get().is_some())
            .finish()
    }
}

impl std::fmt::Display for LazyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LazyStore({})", self.url)
    }
}

#[async_trait::async_trait]
impl ObjectStore for LazyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.store()?.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.store()?.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.store()?.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        match self.store() {
            Ok(store) => store.delete_stream(locations),
            Err(e) => stream::once(async move { Err(e) }).boxed(),
        }
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match self.store() {
            Ok(store) => store.list(prefix),
            Err(e) => stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.store()?.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.store()?.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lazy_s3_store_builds_its_client_at_first_use_only() {
        let env = [("AWS_ENDPOINT_URL", "http://127.0.0.1:9")];
        let lazy = LazyStore::new("s3://bucket/prefix", env);
        assert!(lazy.inner.get().is_none(), "built at open");
        assert!(lazy.store().is_ok());
        assert!(lazy.inner.get().is_some(), "not built at first use");
        // The location is still checked at open.
        assert!(open_store_lazy_with("ftp://x", env).is_err());
        assert!(open_store_lazy_with("s3://bucket/prefix", env).is_ok());
    }

    #[test]
    fn a_lazy_stores_debug_names_its_variables_but_never_their_values() {
        let env = [
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID0001"),
            ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-secret-value"),
            ("AWS_SESSION_TOKEN", "session-token-value"),
        ];
        let lazy = LazyStore::new("s3://bucket/prefix", env);
        let shown = format!("{lazy:?} {lazy:#?}");
        for (name, value) in env {
            assert!(shown.contains(name), "{shown}");
            assert!(!shown.contains(value), "{shown}");
        }
    }

    #[test]
    fn s3_urls_split_into_bucket_and_a_slash_free_prefix() {
        assert_eq!(
            StoreLocation::parse("s3://data/iot/run-1/").unwrap(),
            StoreLocation::S3 {
                bucket: "data".into(),
                prefix: Path::from("iot/run-1"),
            }
        );
        assert_eq!(
            StoreLocation::parse("s3://data").unwrap(),
            StoreLocation::S3 {
                bucket: "data".into(),
                prefix: Path::default(),
            }
        );
    }

    #[test]
    fn anything_without_a_scheme_is_a_local_directory() {
        assert_eq!(
            StoreLocation::parse("./data").unwrap(),
            StoreLocation::Local("./data".into())
        );
    }

    #[test]
    fn bad_locations_are_refused_with_a_reason() {
        for (url, expected) in [
            ("", "empty"),
            ("s3://", "no bucket name"),
            ("s3:///p", "no bucket name"),
            ("gs://b/p", "unsupported scheme gs://"),
            ("s3://b/a//c", "invalid key prefix"),
        ] {
            let err = StoreLocation::parse(url).unwrap_err().to_string();
            assert!(err.contains(expected), "{url}: {err}");
        }
    }

    #[test]
    fn a_missing_local_directory_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        open_store(data.to_str().unwrap()).unwrap();
        assert!(data.is_dir());
    }

    #[test]
    fn an_s3_location_opens_without_a_request() {
        let env = [
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("NOT_AWS", "ignored"),
        ];
        assert!(open_store_with("s3://bucket/prefix", env).is_ok());
    }

    #[test]
    fn the_fallback_region_applies_only_when_no_variable_names_one() {
        let region = |env: &[(&str, &str)], fallback: Option<&str>| {
            let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
            s3_builder(with_fallback_region(env, fallback.map(str::to_owned)))
                .get_config_value(&AmazonS3ConfigKey::Region)
        };
        let profile = Some("eu-west-3");
        assert_eq!(region(&[], profile).as_deref(), Some("eu-west-3"));
        assert_eq!(
            region(&[("AWS_REGION", "ap-south-1")], profile).as_deref(),
            Some("ap-south-1")
        );
        assert_eq!(
            region(&[("AWS_DEFAULT_REGION", "sa-east-1")], profile).as_deref(),
            Some("sa-east-1")
        );
        // Without either, object_store's own default (us-east-1) is decided at build.
        assert_eq!(region(&[], None), None);
    }
}
