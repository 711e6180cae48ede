//! Planners: pure functions of the config and the node state that say what the kernel should
//! hold. The daemon runs them whenever the node state changes; io/ makes the kernel match.
pub(crate) mod fast_path;
pub(crate) mod routes;
