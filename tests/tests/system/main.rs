//! The system tests: one test binary, one module per area. Each module starts the real processes
//! it needs (privitty-init, edged, the engine, the reference license server, the mail server) and
//! says in its own doc comment what it covers. Run one area with a filter:
//! `cargo test -p privitty-tests --test system viewer::`.

mod container;
mod demo;
mod edged_api;
mod edged_engine;
mod edged_gate;
mod edged_security;
mod handover;
mod idle_network;
mod init_managed;
mod init_pid1;
mod license_cli;
mod metrics;
mod peer_exchange;
mod two_gateways;
mod viewer;
