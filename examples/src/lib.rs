//! Embedding examples; see the `[[example]]` entries.
