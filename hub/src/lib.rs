//! The Hugging Face Hub client of neuromfa: fetching checkpoints and checking them.
//!
//! A fetch reads one way: [`fetch`] starts it (`config.json`, the revision pinned to a
//! commit), the listing chooses and resolves the weight files, then either the whole files
//! go into the standard HF cache, verified ([`fetch::Fetcher::fetch_checkpoint`]), or only
//! the byte ranges an analysis reads are planned and read ([`ranges`]). Every request goes
//! through one transport: resolve once, read from the CDN the Hub redirects to, paced by a
//! [`budget::Budget`] shared by the cluster, retried. [`resolve`] resolves revisions to
//! their weights' hashes without downloading them; [`cache`] keeps a worker's downloads
//! under a size bound. The mirror server that speaks the same protocol is
//! `neuromfa-hub-server`.

pub mod budget;
pub mod cache;
mod client;
mod error;
pub mod fetch;
pub mod hashing;
pub mod headers;
mod hfcache;
pub mod listing;
pub mod ranges;
pub mod resolve;
mod transport;

pub use client::{HubSettings, DEFAULT_ENDPOINT};
pub use error::{FetchError, FileRef};
