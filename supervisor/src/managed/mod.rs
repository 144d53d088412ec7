//! Managed mode: activation, license watch, generations.
