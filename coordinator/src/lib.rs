//! The decisions of a neuromfa sweep: spec → task grid, durable state, leases and
//! retries, scheduling, aggregation and export. No sockets: the transport in the
//! `neuromfa` crate drives it, and tests drive it directly.

pub mod export;
pub mod integrity;
pub mod spec;
pub mod state;

pub use spec::SweepSpec;
pub use state::{
    Completion, FetchTotals, Lease, OpenMode, StatusReport, SweepState, TaskMetrics, TaskState,
};
