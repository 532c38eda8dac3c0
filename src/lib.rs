//! neuromfa: distributed Neuron-based Multifractal Analysis of language-model checkpoint
//! suites. This crate holds the command-line commands and the coordinator's gRPC server;
//! the science is in `neuromfa-common`, the sweep decisions in `neuromfa-coordinator`, the
//! protocol in `neuromfa-proto`, the Hub client and mirror in `neuromfa-hub` and
//! `neuromfa-hub-server`, the worker loop in `neuromfa-worker`.

pub mod analyze;
pub mod auth;
pub mod dashboard;
pub mod exit;
pub mod hub;
pub mod integrity;
pub mod report;
pub mod server;
pub mod slurm;
pub mod sweep;
pub mod synth;
pub mod web;

/// The coordinator–worker protocol (`neuromfa-proto`), under the name the server uses.
pub use neuromfa_proto as proto;
/// TLS on the coordinator's channel, the protocol's (`neuromfa_proto::tls`).
pub use neuromfa_proto::tls;
/// The worker (`neuromfa-worker`): `neuromfa worker` and `sweep run` start it.
pub use neuromfa_worker as worker;
