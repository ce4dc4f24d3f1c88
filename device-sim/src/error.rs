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
