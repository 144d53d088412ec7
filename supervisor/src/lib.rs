//! privitty-init: PID 1 of the Privitty Edge container.
//!
//! # Layout
//!
//! - `entry`: the process entry ([`main`]): parse, log, install the reaper, run a mode.
//! - `config`: every option and variable, validated at once.
//! - `pid1`: the PID-1 duties (one reaper, signals as events, spawning, stopping the tree), on
//!   one thread with no async runtime.
//! - `plain`: minimal-init mode (tini/dumb-init compatible).
//! - `managed`: start-up activation, the license watch, generation swaps over a socket the
//!   supervisor keeps, crash restarts and periodic sync; license work runs as
//!   `privitty-edge license …` children, so PID 1 runs no HTTP or TLS code.

pub mod config;
mod entry;
pub mod managed;
pub mod pid1;
pub mod plain;

pub use entry::main;
