//! No code: this crate's test (`tests/manifests.rs`) checks the manifests under `examples/`
//! against the connectors themselves. It is a crate so that the test can call every
//! connector's configuration parser; nothing depends on it.
