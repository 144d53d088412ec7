//! Test support for privitty-edge's system tests, and the reference license server.
//!
//! Nothing in production depends on this crate. System tests (one test binary, `system`:
//! `tests/tests/system/main.rs`, one module per area, e.g. `viewer::`) boot the real
//! binaries — privitty-init, privitty-edged, the real `deltachat-rpc-server` engine, and the reference
//! license server — on port 0 in temp dirs, and print every process's output on failure.

pub mod edged_stack;
pub mod gateways;
pub mod http;
pub mod init_harness;
pub mod license_server;
pub mod mail_server;
pub mod managed_harness;
pub mod prometheus;
pub mod stock_engine;
pub mod support;
