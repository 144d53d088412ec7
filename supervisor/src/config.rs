//! Configuration: every option and variable, parsed and validated in one place.
