//! The Hub's model info answer (`/api/models/<repo>[/revision/<rev>]`), read into
//! `hf-hub`'s type.

use hf_hub::repository::ModelInfo;

use crate::{Cap, Target};

pub const TARGET: Target = Target {
    name: "hub_model_info",
    about: "Hub model info answer (JSON object)",
    run,
    cap: Cap {
        per_byte: 32,
        fixed: 1 << 20,
    },
    seeds: || SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect(),
};

/// Answers as the Hub and the project's stand-in Hub give them.
const SEEDS: [&str; 2] = [
    r#"{"_id":"64a0c0ffee","id":"EleutherAI/pythia-160m-deduped","author":"EleutherAI","sha":"50f5173d932e8e61f858120bcb800b97af589f46","lastModified":"2023-07-09T16:05:38.000Z","private":false,"gated":false,"disabled":false,"downloads":61032,"likes":3,"library_name":"transformers","pipeline_tag":"text-generation","tags":["transformers","pytorch","safetensors","gpt_neox","text-generation","en"],"config":{"architectures":["GPTNeoXForCausalLM"],"model_type":"gpt_neox"},"cardData":{"language":["en"],"license":"apache-2.0"},"siblings":[{"rfilename":".gitattributes"},{"rfilename":"config.json"},{"rfilename":"model.safetensors"}],"inferenceProviderMapping":{"hf-inference":{"status":"live","providerId":"x","task":"text-generation"}},"createdAt":"2023-02-08T21:59:05.000Z","safetensors":{"parameters":{"F16":162322944},"total":162322944},"usedStorage":1}"#,
    r#"{"id":"test-org/tiny","sha":"0000000000000000000000000000000000000000","siblings":[]}"#,
];

fn run(data: &[u8]) {
    std::hint::black_box(serde_json::from_slice::<ModelInfo>(data).ok());
}
