//! Every fuzz target. Each file defines one [`Target`]; adding one is a file and a line in
//! [`ALL`].

use crate::Target;

mod config_json;
mod content_range;
mod etag;
mod evals_csv;
mod evals_json;
mod hub_listing;
mod hub_model_info;
mod pickle;
mod rate_limit;
mod safetensors_header;
mod shard_index;
mod sweep_spec;
mod torch_bin;
mod zip;

/// Every target, by name.
pub const ALL: &[&Target] = &[
    &safetensors_header::TARGET,
    &shard_index::TARGET,
    &zip::TARGET,
    &pickle::TARGET,
    &torch_bin::TARGET,
    &config_json::TARGET,
    &hub_listing::TARGET,
    &hub_model_info::TARGET,
    &content_range::TARGET,
    &etag::TARGET,
    &rate_limit::TARGET,
    &evals_json::TARGET,
    &evals_csv::TARGET,
    &sweep_spec::TARGET,
];

/// `data` as text, as readers that take a `&str` get it (`None`: not UTF-8, which they
/// refuse before parsing).
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// Every `.bin` archive of the fixtures.
fn bin_fixtures() -> Vec<Vec<u8>> {
    crate::fixtures("tests/data/bin", |name| name.ends_with(".bin"))
}
