//! Starting privitty-edged (standalone, with the real engine) for system tests.
