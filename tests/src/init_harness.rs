//! Running privitty-init as PID 1 of a fresh PID namespace for system tests.
