//! The decisions of a neuromfa sweep: spec → task grid, scheduling, durable state,
//! integrity of checkpoints, aggregation and export. No sockets: the transport in the
//! `neuromfa` crate drives it, and tests drive it directly.
//!
//! - [`schedule`]: tasks, queues, leases and workers in memory; decisions return the
//!   [`Change`]s they made and do no I/O.
//! - [`breaker`]: when failures share one cause, leasing stops and their attempts are
//!   given back; probes and `resume` start it again. Pure, like the schedule.
//! - [`store`]: the SQLite schema, migrations, loading, and writing changes in
//!   transactions; the only module that speaks SQL.
//! - [`integrity`]: the duplicate policy and the ledger of what each checkpoint serves.
//! - [`aggregate`]: which results count for which step, and `E`'s reference step.
//! - [`status`]: what `status` shows, built from the schedule.
//! - [`state`]: [`SweepState`], the schedule, ledger and store composed so that nothing
//!   is acknowledged before the transaction holding it is durable.
//! - [`commit`]: the state thread that batches requests into one transaction each.
//! - [`budget`]: the cluster's budget of Hub requests, granted to workers with leases.
//! - [`live`]: the dashboard's snapshot, built from the same state as `status`.
//! - [`metrics`]: the coordinator's metrics in Prometheus' text format.
//! - [`export`]: tables from a state directory, read through the store.

pub mod aggregate;
pub mod breaker;
pub mod budget;
pub mod commit;
mod error;
pub mod export;
pub mod integrity;
pub mod live;
pub mod metrics;
pub mod record;
pub mod schedule;
pub mod spec;
mod spec_keys;
pub mod state;
pub mod status;
pub mod store;

pub use record::{Change, Failure, FailureClass, TaskMetrics, TaskState};
pub use schedule::{Completion, Lease, Schedule};
pub use spec::SweepSpec;
pub use state::{OpenMode, StateError, SweepState};
pub use status::{FetchTotals, StatusReport, SweepEnd};
