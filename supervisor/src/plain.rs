//! Minimal-init mode.
