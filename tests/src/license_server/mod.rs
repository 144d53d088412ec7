//! The reference license server (protocol v1).
