//! Embedding examples for netscope; see the `[[example]]` entries in Cargo.toml.
