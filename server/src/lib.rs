//! larder-server: Larder's three binaries and what composes them. The API
//! and worker libraries know nothing of each other; this crate is where an
//! API node gets its in-process workers (`[worker] embedded`), where the
//! processes meet their signals, and where `larder-admin` reaches both.
//!
//! Its integration tests (`tests/main.rs`) are the ones that need the
//! router and the worker together.

pub mod api_node;
pub mod config_check;
pub mod shutdown;
pub mod worker_metrics;
