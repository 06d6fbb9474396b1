//! Tests of the public API: examples, defaults and diagnostics.
