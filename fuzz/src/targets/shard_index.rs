//! The shard index (`model.safetensors.index.json`, `pytorch_model.bin.index.json`): its
//! `weight_map` names files that become paths, so none may climb out of the checkpoint.

use neuromfa_common::checkpoint::parse_shard_index;

use crate::{Cap, Target};

pub const TARGET: Target = Target {
    name: "shard_index",
    about: "shard index JSON (weight_map: tensor -> shard file)",
    run,
    cap: Cap {
        per_byte: 32,
        fixed: 1 << 20,
    },
    seeds: || crate::fixtures("tests/data", |n| n.ends_with(".index.json")),
};

fn run(data: &[u8]) {
    let Some(text) = super::text(data) else {
        return;
    };
    let Ok(weight_map) = parse_shard_index(text) else {
        return;
    };
    for shard in weight_map.values() {
        let path = std::path::Path::new(shard);
        assert!(
            path.components()
                .all(|c| matches!(c, std::path::Component::Normal(_))),
            "shard path {shard:?} leaves the checkpoint's folder"
        );
    }
}
