//! The Lambda functions' log set-up, one for all four binaries: JSON lines for CloudWatch,
//! `RUST_LOG` (default `info`), no ANSI colours and no timestamps (CloudWatch stamps every
//! line itself), and the current span (the runtime's request id) without its parents.
//! Also how the command-line tools print an error and its causes ([`error_chain`]).

use tracing_subscriber::EnvFilter;

/// Installs the JSON subscriber described in the [module documentation](self). Call once,
/// first thing in a Lambda binary's `main`.
pub fn init_lambda() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(false)
        .without_time()
        .with_span_list(false)
        .init();
}

/// An error and its causes on one line, `outer: cause: root`, leaving out a cause whose
/// text the line already has: many errors print their source inside their own message
/// (`I/O: Connection refused (os error 111)` over `Connection refused (os error 111)`),
/// and anyhow's `{:#}` would print it again.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    /// An error with a message and an optional source, printing its source's text in its
    /// own when `embeds` is set.
    #[derive(Debug)]
    struct E {
        msg: &'static str,
        embeds: bool,
        source: Option<Box<E>>,
    }

    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match (&self.source, self.embeds) {
                (Some(s), true) => write!(f, "{}: {s}", self.msg),
                _ => f.write_str(self.msg),
            }
        }
    }

    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.source.as_deref().map(|s| s as _)
        }
    }

    fn e(msg: &'static str, embeds: bool, source: Option<E>) -> E {
        E {
            msg,
            embeds,
            source: source.map(Box::new),
        }
    }

    #[test]
    fn each_cause_is_printed_once() {
        let root = e("connection refused", false, None);
        let io = e("I/O", true, Some(root));
        let top = e("cannot connect to the broker", false, Some(io));
        assert_eq!(
            error_chain(&top),
            "cannot connect to the broker: I/O: connection refused"
        );
        let plain = e("a", false, Some(e("b", false, Some(e("c", false, None)))));
        assert_eq!(error_chain(&plain), "a: b: c");
    }
}
