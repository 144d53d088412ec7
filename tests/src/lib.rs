//! Test support for privitty-edge's system tests, and the reference license server.
//!
//! Nothing in production depends on this crate. System tests (one test binary, `system`:
//! `tests/tests/system/main.rs`, one module per area, e.g. `viewer::`) boot the real
//! binaries — privitty-init, privitty-edged, the real `deltachat-rpc-server` engine, and the reference
//! license server — on port 0 in temp dirs, and print every process's output on failure.
//!
//! # Layout
//!
//! | to find | look in |
//! |---|---|
//! | a system test of an area (`viewer::`, `init_pid1::`, …) | `tests/system/<area>.rs` (module list in `tests/system/main.rs`) |
//! | locating binaries and the engine, spawning with captured output, `eventually`, skips | [`support`] |
//! | the one HTTP/1.1 test client | [`http`] |
//! | privitty-edged alone with the real engine | [`edged_stack`] |
//! | privitty-init managed mode around edged | [`managed_harness`] |
//! | privitty-init as PID 1 of a fresh PID namespace | [`init_harness`] |
//! | two or three complete gateways over a mail server | [`gateways`], [`mail_server`] |
//! | the engine without privitty-edged in front | [`stock_engine`] |
//! | a real Prometheus | [`prometheus`] |
//! | the reference license server (library, `privitty-license-server` binary) | [`license_server`] |
//! | the demo, load generators, benchmark drivers, the signal-recording test process | `src/bin/` |
//! | benchmarks, scripts, the container test, fuzz targets | `bench/`, `scripts/`, `container/`, `fuzz/` |

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
