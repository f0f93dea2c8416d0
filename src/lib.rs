//! Event sourcing for Rust on PostgreSQL.
//!
//! This facade re-exports the framework's crates:
//!
//! - [`store`]: events, the store traits and the PostgreSQL store.

pub use es_store as store;
