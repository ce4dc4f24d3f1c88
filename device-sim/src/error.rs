//! The errors of the simulator, each worded so that the user knows what to do next.

/// Why a simulation could not run.
///
/// Failures of individual messages are not errors: they are counted in
/// [`crate::SimSummary::failed`], and the run goes on.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A configuration value is out of range.
    #[error("invalid {field}: {reason}")]
    InvalidConfig {
        /// The [`crate::SimConfig`] field (or command-line flag) at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A fleet file cannot be read or parsed.
    #[error("fleet file{}: {reason}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    FleetFile {
        /// The file, when the text came from one.
        path: Option<std::path::PathBuf>,
        /// What is wrong (TOML errors name the line and column).
        reason: String,
    },
    /// The broker address cannot be parsed.
    #[error("invalid broker URL {url:?}: {reason}")]
    BadBrokerUrl {
        /// What was given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The first device could not connect, so the broker is most likely unreachable or
    /// refuses this client; nothing was published.
    #[error("cannot connect to {broker}: {reason} — {hint}")]
    Connect {
        /// The broker URL.
        broker: String,
        /// The MQTT client's error.
        reason: String,
        /// What to try.
        hint: &'static str,
    },
    /// A TLS file or setting cannot be used (unreadable, not PEM, key and certificate do
    /// not match, a device without a certificate in `--cert-dir`).
    #[error("TLS: {what}: {reason} — {hint}")]
    Tls {
        /// The file or setting at fault.
        what: String,
        /// What is wrong with it.
        reason: String,
        /// What to do.
        hint: &'static str,
    },
    /// A feature this version does not implement yet.
    #[error("{0}")]
    Unsupported(String),
}

impl SimError {
    /// Wraps the first device's connection error (an MQTT 3.1.1 or 5
    /// `rumqttc` `ConnectionError`), with a hint chosen by its kind.
    pub(crate) fn connect(broker: &str, err: &(dyn std::error::Error + 'static)) -> Self {
        use rumqttc::ConnectionError as E;
        use rumqttc::v5::ConnectionError as E5;
        use std::io::ErrorKind;
        if let Some((reason, hint)) = crate::tls::explain_handshake_error(err) {
            return SimError::Connect {
                broker: broker.to_owned(),
                reason,
                hint,
            };
        }
        let io = match (err.downcast_ref::<E>(), err.downcast_ref::<E5>()) {
            (Some(E::Io(e)), _) | (_, Some(E5::Io(e))) => Some(e.kind()),
            _ => None,
        };
        let refused = "is a broker running? try `iotpipe up`, or start mosquitto \
                       (`mosquitto -p PORT`), then pass --broker mqtt://HOST:PORT";
        let rejected = "the broker rejected the MQTT CONNECT: check that it allows anonymous \
                        clients (mosquitto: `allow_anonymous true`) and these client ids";
        let hint = match (io, err.downcast_ref::<E>(), err.downcast_ref::<E5>()) {
            (Some(ErrorKind::ConnectionRefused), _, _) => refused,
            (Some(ErrorKind::NotFound | ErrorKind::Other), _, _) => {
                "check the host name in --broker"
            }
            (_, Some(E::NetworkTimeout | E::FlushTimeout), _) | (_, _, Some(E5::Timeout(_))) => {
                "the host did not answer within 5 s: check the address, the port and any \
                 firewall"
            }
            (_, Some(E::ConnectionRefused(_)), _) | (_, _, Some(E5::ConnectionRefused(_))) => {
                rejected
            }
            (_, _, Some(_)) => {
                "check that --broker points at an MQTT 5 broker (or drop --mqtt-version 5)"
            }
            _ => "check that --broker points at an MQTT 3.1.1 broker",
        };
        let reason = match io {
            Some(ErrorKind::ConnectionRefused) => "connection refused".into(),
            _ => err.to_string(),
        };
        SimError::Connect {
            broker: broker.to_owned(),
            reason,
            hint,
        }
    }
}
