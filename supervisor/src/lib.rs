//! privitty-init: PID 1 of the Privitty Edge container.
//!
//! `pid1` owns the PID-1 duties (one reaper, signals as events, spawning, stopping the tree);
//! `plain` is minimal-init mode; `managed` adds start-up activation, the license watch, generation
//! swaps over a socket the supervisor keeps, crash restarts and periodic sync.

pub mod config;
pub mod managed;
pub mod pid1;
pub mod plain;
