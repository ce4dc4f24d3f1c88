//! Helpers shared by the workspace's tests, instead of a copy in each crate's `tests/`.
//!
//! # Layout
//! - [`moto`]: the moto server that `tests/setup/services.sh` starts (`IOTPIPE_TEST_MOTO`):
//!   its endpoint, an SDK configuration and the `AWS_*` variables pointing at it, bucket
//!   creation, unique resource names, SQS queues and S3 → SQS notifications.
//! - [`fixtures`]: the typical device message the benchmarks feed the handlers.
//! - [`free_port`]: a loopback port nothing listens on.
//! - [`package_dir`], [`workspace_root`]: the checkout the tests run in.
//!
//! A test that needs a server fails when it is missing, saying how to start it: it never
//! skips.

// Test helpers: a failure to reach a test server is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod fixtures;
pub mod moto;

use std::path::PathBuf;

/// The directory of the package whose test or bench is running: `CARGO_MANIFEST_DIR` as
/// cargo sets it at run time.
///
/// Not the compile-time `env!("CARGO_MANIFEST_DIR")`: with the target directory cached
/// outside the clone (tests/run.sh), cargo reuses a test built in another checkout when
/// nothing changed, and its compile-time path names that checkout (a suite run in a new
/// clone failed on `/check/work/main/tests/py/…`, a path that no longer existed).
///
/// # Panics
/// When run outside cargo (the variable is unset).
pub fn package_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .expect("CARGO_MANIFEST_DIR is unset: run the tests with cargo test")
}

/// The workspace root: the parent of [`package_dir`] (every package is one level down).
pub fn workspace_root() -> PathBuf {
    let dir = package_dir();
    dir.parent().map_or(dir.clone(), PathBuf::from)
}

/// A loopback TCP port that was free a moment ago (bound to port 0, then released).
///
/// # Panics
/// When no port can be bound on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"))
}
