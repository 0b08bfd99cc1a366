//! Test harness: the workspace's shared one (`testsupport`): a real cluster
//! started with `eggs local-cluster` on run-time ports in a temporary
//! folder, and `eggs` invocations against it.

#![allow(unused_imports)] // reason: each test binary uses a different part of the harness

pub use testsupport::{Cluster, Printed, binary, test_bytes};
