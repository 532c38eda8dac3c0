//! The neuromfa worker: fetching checkpoints and running tasks.
//!
//! [`fetch`] downloads one checkpoint from the Hugging Face Hub (or a mirror) into the
//! standard HF cache and verifies every file; [`hub_server`] serves checkpoints from a
//! local directory over the same protocol, for tests and loopback mirrors; [`ranges`] fetches
//! only the byte ranges the queued seeds read.

pub mod cache;
pub mod fetch;
pub mod hub_server;
pub mod ranges;
pub mod resolve;

mod hashing;
