//! The science of neuromfa: Neuron-based Multifractal Analysis of GPT-NeoX checkpoints.
//! Pure computation, no networking: checkpoint reading, network layout, sampling,
//! box growing, spectra, emergence and statistics, and what an analysis reads (for fetchers);
//! also the vocabulary fetchers and the coordinator share (fetch modes, the Hub's budgets).

pub mod budget;
pub mod checkpoint;
pub mod error;
pub mod layout;
pub mod network;
pub mod pipeline;
pub mod read_plan;
pub mod sampler;
pub mod shortest_path;
pub mod spectrum;
pub mod stats;
pub mod synth;
pub mod torch;

pub use checkpoint::{
    Checkpoint, RevisionWeights, TensorLayout, WeightFileInfo, WeightFiles, WeightFormat,
};
pub use error::Error;
pub use layout::{BlockTensor, ModelShape};
pub use pipeline::{
    analyze_seed, analyze_seeds, analyze_seeds_as_ready, AnalysisParams, DistanceMode,
    SeedAnalysis, SeedResult,
};
pub use read_plan::{read_plan, ReadPlan};
