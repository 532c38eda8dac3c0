//! The Hugging Face Hub client of neuromfa: fetching checkpoints and checking them.
//!
//! [`fetch`] downloads one checkpoint from the Hub (or a mirror) into the standard HF cache
//! and verifies every file; [`ranges`] fetches only the byte ranges an analysis reads;
//! [`resolve`] resolves revisions to their weights' hashes without downloading them;
//! [`cache`] keeps a worker's downloads under a size bound. The mirror server that speaks the
//! same protocol is `neuromfa-hub-server`.

pub mod cache;
mod client;
mod error;
pub mod fetch;
pub mod hashing;
pub mod headers;
pub mod ranges;
pub mod resolve;

pub use client::{HubSettings, DEFAULT_ENDPOINT};
pub use error::{FetchError, FileRef};
