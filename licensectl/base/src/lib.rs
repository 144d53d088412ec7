//! What every Privitty Edge binary (privitty-init, privitty-edged, privitty-edge) shares below the
//! license library: process basics, no licensing.
//!
//! It owns: the registry of environment variables, the log set-up, the duration syntax of every
//! setting, the restart backoff, binding the HTTP listening socket, and the health probe of the
//! local daemon. Must not: know anything about licenses, accounts or the engine (those are in
//! `licensectl` and `edged`, which build on this crate), or start a runtime.
//!
//! # Layout
//!
//! One module per responsibility. The leaves ([`env`], [`duration`], [`pacing`], [`chain`]) use
//! nothing of this crate; [`logging`] and [`listen`] name their variables through [`env`], and
//! [`health`] formats errors with [`chain`]. `layers.rs` fails the tests on an import cycle in
//! any crate of the workspace.
//!
//! - [`env`] — every `PRIVITTY_…` variable: name, default, reader, meaning (the README's
//!   "Configuration" table and the `--help` texts are checked against it).
//! - [`logging`] — `PRIVITTY_LOG` / `PRIVITTY_LOG_FORMAT`, the global subscriber of each binary.
//! - [`duration`] — the one duration syntax of every setting (`8s`, `500ms`, `14days`).
//! - [`pacing`] — the exponential restart backoff (privitty-init's generations, edged's engine).
//! - [`listen`] — binding the HTTP listener (`SO_REUSEADDR`, the backlog that holds connections
//!   during a swap), for privitty-init and for an edged that binds its own.
//! - [`health`] — `GET /health` on the local daemon: `privitty-edge health`, the image's
//!   `HEALTHCHECK` (it uses [`chain`] too).
//! - [`chain`] — an error and its sources as one line.

pub mod chain;
pub mod duration;
pub mod env;
pub mod health;
pub mod listen;
pub mod logging;
pub mod pacing;

#[cfg(test)]
mod layers;
