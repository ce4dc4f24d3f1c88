//! TLS with mutual X.509 for `mqtts://` brokers (AWS IoT Core, mosquitto with
//! `require_certificate true`).
//!
//! A device proves who it is with a client certificate: either one certificate shared by
//! the whole fleet ([`TlsConfig::cert`] + [`TlsConfig::key`]) or one per device from a
//! directory ([`TlsConfig::cert_dir`]), in the layout `infra/provision-devices.sh` writes
//! (`DIR/<device_id>/cert.pem` + `DIR/<device_id>/private.key`) or flat
//! (`DIR/<device_id>.pem` + `DIR/<device_id>.key`). The broker is checked against
//! [`TlsConfig::ca`] (default: `DIR/AmazonRootCA1.pem` when a certificate directory has
//! one, else the system's trust store).
//!
//! The handshake runs on rustls with the **aws-lc-rs** provider, the crypto the AWS SDK
//! already builds in this workspace; it is passed explicitly to every `ClientConfig`, so
//! nothing depends on a process-wide default provider.
//!
//! AWS IoT Core also takes MQTT on port 443 when the client offers the ALPN protocol
//! `x-amzn-mqtt-ca` ([`AWS_IOT_ALPN`]); [`TlsSetup`] offers it automatically for
//! `mqtts://…amazonaws.com:443`, or whatever [`TlsConfig::alpn`] lists.
//!
//! Everything that can be checked before connecting (files readable, PEM valid, the key
//! belongs to the certificate) is checked by [`TlsSetup::new`] and reported as
//! [`SimError::Tls`] naming the file and what to do; what only the broker can decide
//! (does it trust our certificate, do we trust its) comes back from the first connection
//! and is explained in the connection error (unknown issuer, refused client certificate).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use serde::{Deserialize, Serialize};

use crate::error::SimError;
use crate::mqtt::{BrokerUrl, Scheme};

/// The ALPN protocol AWS IoT Core expects for MQTT with X.509 client certificates on
/// port 443.
pub const AWS_IOT_ALPN: &str = "x-amzn-mqtt-ca";
/// File name of the Amazon root CA that `infra/provision-devices.sh` saves next to the
/// device directories; used as the CA when a certificate directory holds one.
pub const AWS_ROOT_CA_FILE: &str = "AmazonRootCA1.pem";

/// TLS settings of a run; only used with an `mqtts://` broker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificate(s) that signed the broker's certificate. Default:
    /// `cert_dir/AmazonRootCA1.pem` if present, else the system trust store.
    pub ca: Option<PathBuf>,
    /// PEM client certificate (chain) shared by every device; needs [`Self::key`].
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of [`Self::cert`].
    pub key: Option<PathBuf>,
    /// Directory of per-device certificates: `DIR/<device_id>/cert.pem` +
    /// `DIR/<device_id>/private.key` (as `infra/provision-devices.sh` writes them) or
    /// `DIR/<device_id>.pem` + `DIR/<device_id>.key`. Excludes `cert`/`key`.
    pub cert_dir: Option<PathBuf>,
    /// ALPN protocols to offer. Empty (the default): `x-amzn-mqtt-ca` for an AWS IoT host
    /// (`*.amazonaws.com`) on port 443, none otherwise.
    pub alpn: Vec<String>,
}

impl TlsConfig {
    /// Whether any TLS option is set (they make no sense with a plain `mqtt://` broker).
    pub fn is_set(&self) -> bool {
        self.ca.is_some()
            || self.cert.is_some()
            || self.key.is_some()
            || self.cert_dir.is_some()
            || !self.alpn.is_empty()
    }

    /// Checks the combination of options (not the files: [`TlsSetup::new`] reads those).
    pub fn validate(&self, broker: &BrokerUrl) -> Result<(), SimError> {
        let invalid = |field, reason: &str| SimError::InvalidConfig {
            field,
            reason: reason.to_owned(),
        };
        if broker.scheme == Scheme::Mqtt && self.is_set() {
            return Err(invalid(
                "tls",
                "--ca, --cert, --key, --cert-dir and --alpn need a TLS broker: write \
                 --broker mqtts://HOST:PORT",
            ));
        }
        match (&self.cert, &self.key, &self.cert_dir) {
            (Some(_), None, _) => Err(invalid("key", "--cert needs --key (its private key)")),
            (None, Some(_), _) => Err(invalid("cert", "--key needs --cert (its certificate)")),
            (Some(_), Some(_), Some(_)) => Err(invalid(
                "cert_dir",
                "give either one shared certificate (--cert + --key) or --cert-dir, not both",
            )),
            _ => Ok(()),
        }
    }
}

/// Where a device's certificate comes from.
#[derive(Debug)]
enum ClientAuth {
    /// No client certificate (servers that do not ask for one).
    None,
    /// One config for every device.
    Shared(Arc<ClientConfig>),
    /// Per-device files under this directory.
    Dir(PathBuf),
}

/// Ready-to-use TLS client settings of a run: the trust roots are loaded once, a shared
/// certificate once; per-device certificates when each device starts.
#[derive(Debug)]
pub struct TlsSetup {
    roots: Arc<RootCertStore>,
    alpn: Vec<Vec<u8>>,
    auth: ClientAuth,
}

impl TlsSetup {
    /// Loads the CA and the shared certificate, or checks that the certificate directory
    /// has a certificate and key for every id in `device_ids`.
    pub fn new<'a>(
        cfg: &TlsConfig,
        broker: &BrokerUrl,
        device_ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, SimError> {
        cfg.validate(broker)?;
        let ca = cfg.ca.clone().or_else(|| {
            cfg.cert_dir
                .as_ref()
                .map(|d| d.join(AWS_ROOT_CA_FILE))
                .filter(|p| p.is_file())
        });
        let roots = Arc::new(match &ca {
            Some(path) => load_roots(path)?,
            None => system_roots()?,
        });
        let alpn: Vec<Vec<u8>> = if cfg.alpn.is_empty() {
            if is_aws_iot_443(broker) {
                vec![AWS_IOT_ALPN.as_bytes().to_vec()]
            } else {
                Vec::new()
            }
        } else {
            cfg.alpn.iter().map(|p| p.as_bytes().to_vec()).collect()
        };
        let mut setup = Self {
            roots,
            alpn,
            auth: ClientAuth::None,
        };
        setup.auth = match (&cfg.cert, &cfg.key, &cfg.cert_dir) {
            (Some(cert), Some(key), _) => ClientAuth::Shared(setup.config_with(cert, key)?),
            (_, _, Some(dir)) => {
                check_cert_dir(dir, device_ids)?;
                ClientAuth::Dir(dir.clone())
            }
            _ => ClientAuth::None,
        };
        Ok(setup)
    }

    /// The ALPN protocols offered.
    pub fn alpn(&self) -> Vec<String> {
        self.alpn
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    /// The rustls client config of `device_id`.
    pub fn client_config(&self, device_id: &str) -> Result<Arc<ClientConfig>, SimError> {
        match &self.auth {
            ClientAuth::Shared(cfg) => Ok(Arc::clone(cfg)),
            ClientAuth::Dir(dir) => {
                let (cert, key) = device_files(dir, device_id);
                self.config_with(&cert, &key)
            }
            ClientAuth::None => {
                let mut cfg = builder()?
                    .with_root_certificates(Arc::clone(&self.roots))
                    .with_no_client_auth();
                cfg.alpn_protocols.clone_from(&self.alpn);
                Ok(Arc::new(cfg))
            }
        }
    }

    fn config_with(&self, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, SimError> {
        let chain = load_certs(cert, "client certificate")?;
        let key_der = load_key(key)?;
        let mut cfg = builder()?
            .with_root_certificates(Arc::clone(&self.roots))
            .with_client_auth_cert(chain, key_der)
            .map_err(|e| SimError::Tls {
                what: format!("{} with {}", cert.display(), key.display()),
                reason: e.to_string(),
                hint: if matches!(e, rustls::Error::InconsistentKeys(_)) {
                    "the key does not belong to the certificate: pass the private key \
                     that was created with it"
                } else {
                    "use an RSA or ECDSA (P-256/P-384) key and its certificate"
                },
            })?;
        cfg.alpn_protocols.clone_from(&self.alpn);
        Ok(Arc::new(cfg))
    }
}

/// A rustls config builder on aws-lc-rs with the safe default protocol versions.
fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, SimError> {
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| SimError::Tls {
            what: "the TLS provider (aws-lc-rs)".into(),
            reason: e.to_string(),
            hint: "this build of device-sim cannot do TLS; report it",
        })
}

/// AWS IoT Core's data endpoints, on the port that needs ALPN to mean MQTT.
fn is_aws_iot_443(broker: &BrokerUrl) -> bool {
    broker.port == 443 && broker.host.to_ascii_lowercase().ends_with(".amazonaws.com")
}

/// `DIR/<id>/cert.pem` + `DIR/<id>/private.key` when that directory exists, else
/// `DIR/<id>.pem` + `DIR/<id>.key`.
pub fn device_files(dir: &Path, device_id: &str) -> (PathBuf, PathBuf) {
    let sub = dir.join(device_id);
    if sub.is_dir() {
        (sub.join("cert.pem"), sub.join("private.key"))
    } else {
        (
            dir.join(format!("{device_id}.pem")),
            dir.join(format!("{device_id}.key")),
        )
    }
}

fn check_cert_dir<'a>(
    dir: &Path,
    device_ids: impl IntoIterator<Item = &'a str>,
) -> Result<(), SimError> {
    if !dir.is_dir() {
        return Err(SimError::Tls {
            what: dir.display().to_string(),
            reason: "not a directory".into(),
            hint: "pass the directory infra/provision-devices.sh --out wrote \
                   (DIR/<device_id>/cert.pem, private.key)",
        });
    }
    let mut missing = Vec::new();
    let mut total = 0usize;
    for id in device_ids {
        let (cert, key) = device_files(dir, id);
        if !cert.is_file() || !key.is_file() {
            total += 1;
            if missing.len() < 3 {
                missing.push(cert.display().to_string());
            }
        }
    }
    if total > 0 {
        return Err(SimError::Tls {
            what: dir.display().to_string(),
            reason: format!(
                "no certificate and key for {total} device(s), e.g. {}",
                missing.join(", ")
            ),
            hint: "provision those devices (infra/provision-devices.sh), or match \
                   --devices/--device-prefix to the ids in the directory",
        });
    }
    Ok(())
}

fn read_error(path: &Path, what: &str, e: &io::Error) -> SimError {
    SimError::Tls {
        what: format!("{what} {}", path.display()),
        reason: e.to_string(),
        hint: if e.kind() == io::ErrorKind::PermissionDenied {
            "make the file readable by this user"
        } else {
            "check the path"
        },
    }
}

fn pem_error(path: &Path, what: &str, e: rustls::pki_types::pem::Error) -> SimError {
    match e {
        rustls::pki_types::pem::Error::Io(io) => read_error(path, what, &io),
        rustls::pki_types::pem::Error::NoItemsFound => SimError::Tls {
            what: format!("{what} {}", path.display()),
            reason: "no PEM section of the right kind in it".into(),
            hint: "certificates are PEM (-----BEGIN CERTIFICATE-----) and keys PEM \
                   (-----BEGIN PRIVATE KEY----- / RSA PRIVATE KEY / EC PRIVATE KEY); \
                   convert DER with `openssl x509 -inform der` or `openssl pkey -inform der`",
        },
        other => SimError::Tls {
            what: format!("{what} {}", path.display()),
            reason: other.to_string(),
            hint: "the PEM is damaged: download or export it again",
        },
    }
}

fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, SimError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, what, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, what, e))?;
    if certs.is_empty() {
        return Err(pem_error(
            path,
            what,
            rustls::pki_types::pem::Error::NoItemsFound,
        ));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, SimError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, "private key", e))
}

fn load_roots(path: &Path) -> Result<RootCertStore, SimError> {
    let certs = load_certs(path, "CA file")?;
    let mut roots = RootCertStore::empty();
    let (_, bad) = roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        return Err(SimError::Tls {
            what: format!("CA file {}", path.display()),
            reason: format!("none of its {bad} certificate(s) can be used as a trust anchor"),
            hint: "pass the CA certificate that signed the broker's certificate",
        });
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, SimError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(SimError::Tls {
            what: "the system trust store".into(),
            reason: "no CA certificates found".into(),
            hint: "pass --ca FILE (for AWS IoT Core: AmazonRootCA1.pem from \
                   https://www.amazontrust.com/repository/AmazonRootCA1.pem)",
        });
    }
    Ok(roots)
}

/// Finds the rustls error inside a failed connection, if the failure was a TLS one. It
/// sits at different depths: in the TLS connector's error for a failed handshake, in the
/// packet reader's I/O error when the server's alert arrives after the client finished
/// its half (TLS 1.3, or a refused client certificate).
fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = e
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

/// Words for a failed TLS handshake: what happened and what to do. `None` when `err` is
/// not a TLS failure.
pub(crate) fn explain_handshake_error(
    err: &(dyn std::error::Error + 'static),
) -> Option<(String, &'static str)> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as R};
    let e = rustls_error(err)?;
    let hint = match e {
        R::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "the broker's certificate is not signed by the CA given with --ca: pass the CA \
             that signed it (AWS IoT Core: AmazonRootCA1.pem)"
        }
        R::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "the broker's certificate does not name the host in --broker: connect by the \
             name (or IP) its certificate lists"
        }
        R::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => "the broker's certificate is expired or not yet valid: check it and this clock",
        R::AlertReceived(
            A::CertificateRequired | A::BadCertificate | A::UnknownCA | A::AccessDenied,
        )
        | R::NoCertificatesPresented => {
            "the broker refused the client certificate: pass --cert/--key (or --cert-dir) \
             signed by a CA the broker trusts (AWS IoT Core: the certificate must be ACTIVE \
             and attached to a policy that allows iot:Connect for this client id)"
        }
        R::AlertReceived(A::NoApplicationProtocol) => {
            "the broker does not speak the ALPN protocol offered: check --alpn"
        }
        _ => "check --ca, --cert and --key against the broker's TLS settings",
    };
    Some((format!("TLS handshake failed: {e}"), hint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_for_aws_iot_on_443_is_automatic_and_explicit_alpn_wins() {
        // No --ca: the system trust store (ca-certificates).
        let cfg = TlsConfig::default();
        let ids = std::iter::empty::<&str>();
        let aws: BrokerUrl = "mqtts://abc-ats.iot.eu-west-1.amazonaws.com:443"
            .parse()
            .unwrap();
        assert_eq!(
            TlsSetup::new(&cfg, &aws, ids).unwrap().alpn(),
            [AWS_IOT_ALPN]
        );
        let aws_8883: BrokerUrl = "mqtts://abc-ats.iot.eu-west-1.amazonaws.com"
            .parse()
            .unwrap();
        assert!(
            TlsSetup::new(&cfg, &aws_8883, std::iter::empty())
                .unwrap()
                .alpn()
                .is_empty()
        );
        let other: BrokerUrl = "mqtts://broker.local:443".parse().unwrap();
        assert!(
            TlsSetup::new(&cfg, &other, std::iter::empty())
                .unwrap()
                .alpn()
                .is_empty()
        );
        let explicit = TlsConfig {
            alpn: vec!["mqtt".into()],
            ..cfg
        };
        assert_eq!(
            TlsSetup::new(&explicit, &other, std::iter::empty())
                .unwrap()
                .alpn(),
            ["mqtt"]
        );
    }

    #[test]
    fn flat_and_provisioned_certificate_layouts_are_both_found() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            device_files(dir.path(), "d1"),
            (dir.path().join("d1.pem"), dir.path().join("d1.key"))
        );
        std::fs::create_dir(dir.path().join("d2")).unwrap();
        assert_eq!(
            device_files(dir.path(), "d2"),
            (
                dir.path().join("d2/cert.pem"),
                dir.path().join("d2/private.key")
            )
        );
    }

    #[test]
    fn a_cert_without_a_key_or_with_a_cert_dir_is_refused() {
        let b: BrokerUrl = "mqtts://h".parse().unwrap();
        let half = TlsConfig {
            cert: Some("c.pem".into()),
            ..TlsConfig::default()
        };
        assert!(half.validate(&b).unwrap_err().to_string().contains("--key"));
        let both = TlsConfig {
            cert: Some("c.pem".into()),
            key: Some("k.pem".into()),
            cert_dir: Some("d".into()),
            ..TlsConfig::default()
        };
        assert!(
            both.validate(&b)
                .unwrap_err()
                .to_string()
                .contains("not both")
        );
    }
}
