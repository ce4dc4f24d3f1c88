//! The AWS SDK's credential chain for the command line's `--data s3://…` store.
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

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
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
