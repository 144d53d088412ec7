//! Harness for privitty-init managed-mode tests (generations, swaps).
