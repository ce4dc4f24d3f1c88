//! A crash switch for the kill-and-rerun tests: with `IOTPIPE_CRASH_AFTER_WRITES=N` in the
//! environment, the stack's object store aborts the process right after its N-th completed
//! write (a put, a completed multipart upload, a copy, a rename or a delete), before whoever wrote
//! learns that it succeeded — the worst moment for a crash, since the write is durable and
//! nothing that follows it is.
//!
//! `abort` ends the process like `SIGKILL` does for what matters here: no destructor, no
//! flush, no buffered writer closed. Unset (the default), the store is not wrapped at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use object_store::ObjectStore;
use object_store::path::Path;
use telemetry::after_write::{AfterWrite, Write, WriteHook};

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
    Ok(Arc::new(AfterWrite::new(
        store,
        Switch {
            after,
            done: AtomicU64::new(0),
        },
    )))
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
    fn count(&self, what: &str, location: &Path) {
        let n = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.after {
            eprintln!("{CRASH_AFTER_WRITES_ENV}: aborting after write {n} ({what} {location})");
            std::process::abort();
        }
    }
}

#[async_trait::async_trait]
impl WriteHook for Switch {
    async fn written(&self, write: Write, location: &Path) -> object_store::Result<()> {
        self.count(write.name(), location);
        Ok(())
    }

    fn deleted(&self, location: &Path) {
        self.count(Write::Delete.name(), location);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_below_the_chosen_one_pass_through() {
        let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let store = AfterWrite::new(
            inner.clone(),
            Switch {
                after: 3,
                done: AtomicU64::new(0),
            },
        );
        use object_store::ObjectStoreExt;
        store.put(&Path::from("a"), "1".into()).await.unwrap();
        store.put(&Path::from("b"), "2".into()).await.unwrap();
        assert_eq!(store.hook().done.load(Ordering::SeqCst), 2);
        assert!(inner.head(&Path::from("b")).await.is_ok());
    }
}
