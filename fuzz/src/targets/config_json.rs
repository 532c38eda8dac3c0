//! `config.json` into the network's layout: the model's shape, then every weight matrix's
//! expected shape and the weight count, none of which may overflow.

use neuromfa_common::{BlockTensor, ModelShape};

use crate::{Cap, Target};

pub const TARGET: Target = Target {
    name: "config_json",
    about: "config.json into the model's shape and its matrices' expected shapes",
    run,
    cap: Cap {
        per_byte: 32,
        fixed: 1 << 20,
    },
    seeds: || {
        let mut seeds = crate::fixtures("tests/data", |n| n == "config.json");
        seeds.extend(crate::fixtures("examples/demo/hub", |n| n == "config.json"));
        seeds.dedup();
        seeds
    },
};

fn run(data: &[u8]) {
    let Some(text) = super::text(data) else {
        return;
    };
    let Ok(shape) = ModelShape::from_config_json(text) else {
        return;
    };
    std::hint::black_box(shape.matrix_parameters());
    for tensor in BlockTensor::ALL {
        let [rows, cols] = tensor.expected_shape(&shape);
        assert!(rows > 0 && cols > 0);
        std::hint::black_box(
            rows.checked_mul(cols)
                .expect("a matrix of more than usize elements"),
        );
    }
}
