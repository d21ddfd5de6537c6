//! The HTTP API beyond probes and metrics.

pub mod violations;
