//! Helpers shared by the workspace's tests, instead of a copy in each crate's `tests/`.
//!
//! # Layout
//! - [`moto`]: the moto server that `tests/setup/services.sh` starts (`IOTPIPE_TEST_MOTO`):
//!   its endpoint, an SDK configuration and the `AWS_*` variables pointing at it, bucket
//!   creation, unique resource names, SQS queues and S3 → SQS notifications.
//! - [`free_port`]: a loopback port nothing listens on.
//!
//! A test that needs a server fails when it is missing, saying how to start it: it never
//! skips.

// Test helpers: a failure to reach a test server is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod moto;

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
