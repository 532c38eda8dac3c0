//! neuromfa: distributed Neuron-based Multifractal Analysis of language-model checkpoint
//! suites. This crate holds the command-line commands and the gRPC transport; the science
//! is in `neuromfa-common`, the sweep decisions in `neuromfa-coordinator`, fetching and
//! running tasks in `neuromfa-worker`.

pub mod analyze;
pub mod auth;
pub mod hub;
pub mod integrity;
pub mod report;
pub mod server;
pub mod slurm;
pub mod sweep;
pub mod synth;
pub mod tls;
pub mod worker;

/// The coordinator–worker protocol (`neuromfa-proto`), under the name the server uses.
pub use neuromfa_proto as proto;
