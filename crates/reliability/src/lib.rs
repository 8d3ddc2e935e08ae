//! Tests only: see `tests/`. The connector binaries under test come from the same target
//! directory (`cargo test --workspace` builds them).
