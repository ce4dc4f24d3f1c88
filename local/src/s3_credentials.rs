//! The AWS SDK's credential chain and profile region for the command line's
//! `--data s3://…` store.
//!
//! object_store's S3 client finds credentials in `AWS_ACCESS_KEY_ID`/… variables, a web
//! identity token or a container endpoint, and otherwise asks the EC2 instance metadata
//! service; it does not read `~/.aws` profiles. The SDK clients of the same run
//! (`--stream kinesis:NAME`, `firehose:NAME`) do, so with only `AWS_PROFILE` set a run's
//! Kinesis client had credentials and its `--data s3://…` store failed its first request
//! at the metadata service. [`SdkCredentials`] gives the S3
//! client the SDK's default chain (environment, profile, web identity, container,
//! instance metadata — in that order): one set of credentials for everything a run
//! touches, as the README promises. The Lambda functions keep object_store's own chain
//! (their role's credentials are in the environment).
//!
//! The region likewise: object_store reads `AWS_REGION` / `AWS_DEFAULT_REGION` and
//! otherwise signs for `us-east-1`, where the SDK clients take the profile's `region`.
//! [`profile_region`] reads it the SDK's way, so that a profile with a region is enough
//! for S3 too (a bucket elsewhere than us-east-1 otherwise refuses every request).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::meta::region::ProvideRegion;
use aws_sdk_kinesis::config::ProvideCredentials;
use object_store::CredentialProvider;
use object_store::aws::AwsCredential;
use tokio::sync::{Mutex, OnceCell};

/// Temporary credentials are fetched again this long before they expire.
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// An object_store credential provider backed by the SDK's default chain, built at the
/// first request (building it reads the profile files) and cached until shortly before
/// the credentials expire; concurrent requests wait for one fetch.
#[derive(Debug, Default)]
pub struct SdkCredentials {
    chain: OnceCell<DefaultCredentialsChain>,
    /// The credentials and when they expire (`None`: never).
    cached: Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

#[async_trait::async_trait]
impl CredentialProvider for SdkCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        if let Some((credential, expiry)) = cached.as_ref()
            && expiry.is_none_or(|e| e > SystemTime::now() + REFRESH_BEFORE)
        {
            return Ok(Arc::clone(credential));
        }
        let chain = self
            .chain
            .get_or_init(|| DefaultCredentialsChain::builder().build())
            .await;
        let c = chain
            .provide_credentials()
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: format!(
                    "no AWS credentials: {}. Set AWS_PROFILE (a profile in ~/.aws), or \
                     AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                    telemetry::logging::error_chain(&e).trim_end_matches('.')
                )
                .into(),
            })?;
        let credential = Arc::new(AwsCredential {
            key_id: c.access_key_id().to_owned(),
            secret_key: c.secret_access_key().to_owned(),
            token: c.session_token().map(str::to_owned),
        });
        *cached = Some((Arc::clone(&credential), c.expiry()));
        Ok(credential)
    }
}

/// The selected profile's `region` (`AWS_PROFILE`, else `default`, in `AWS_CONFIG_FILE` or
/// `~/.aws/config`, following `source_profile`), read as the SDK's clients read it; `None`
/// when the profile names none. Never asks the instance metadata service.
pub fn profile_region() -> Option<String> {
    // The SDK's provider is async; a thread of its own with a small runtime lets any
    // caller wait for it, inside a runtime or not. It runs once per process.
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let region = rt.block_on(async {
            aws_config::profile::ProfileFileRegionProvider::new()
                .region()
                .await
        })?;
        Some(region.to_string())
    })
    .join()
    .ok()
    .flatten()
}
