//! Criterion benchmarks; see the `[[bench]]` entries.
