//! What a virtual hub serves: models (a preset shape under a repo name), their steps, how
//! each step's weights are stored, and which steps serve another step's weights.

use std::collections::BTreeSet;

use anyhow::Context as _;
use neuromfa_common::synth::{find_preset, pythia_steps, Preset};
use serde::{Deserialize, Serialize};

/// How a revision stores its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// `model.safetensors`.
    Safetensors,
    /// `model-0000k-of-0000n.safetensors` and `model.safetensors.index.json`.
    SafetensorsSharded,
    /// `pytorch_model.bin` as torch 2 writes it.
    Bin,
    /// `pytorch_model-0000k-of-0000n.bin` as torch 1 wrote them for transformers, and
    /// `pytorch_model.bin.index.json`.
    BinSharded,
}

impl Format {
    pub const ALL: [Format; 4] = [
        Format::Safetensors,
        Format::SafetensorsSharded,
        Format::Bin,
        Format::BinSharded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::SafetensorsSharded => "safetensors-sharded",
            Format::Bin => "bin",
            Format::BinSharded => "bin-sharded",
        }
    }
}

/// How the formats are mixed over a model's steps, and how files are cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Formats {
    /// Relative weights of each format in the mix; a step's format is drawn by a hash of
    /// the repo and the step, so it is the same on every run.
    pub safetensors: u32,
    pub safetensors_sharded: u32,
    pub bin: u32,
    pub bin_sharded: u32,
    /// Largest shard of a sharded checkpoint (a sharded one always has two or more).
    pub shard_bytes: u64,
    /// `.bin` files larger than this are written with ZIP64 records throughout, as torch
    /// does once sizes and offsets no longer fit 32 bits.
    pub zip64_above_bytes: u64,
}

impl Default for Formats {
    fn default() -> Self {
        Formats {
            safetensors: 2,
            safetensors_sharded: 0,
            bin: 1,
            bin_sharded: 1,
            shard_bytes: 2_000_000_000,
            zip64_above_bytes: 0xFFFF_0000,
        }
    }
}

impl Formats {
    fn weight(&self, format: Format) -> u32 {
        match format {
            Format::Safetensors => self.safetensors,
            Format::SafetensorsSharded => self.safetensors_sharded,
            Format::Bin => self.bin,
            Format::BinSharded => self.bin_sharded,
        }
    }

    /// The format drawn by `draw` (any 64-bit number) from the mix.
    pub(crate) fn pick(&self, draw: u64) -> Format {
        let total: u64 = Format::ALL.iter().map(|f| u64::from(self.weight(*f))).sum();
        let mut at = draw % total.max(1);
        for format in Format::ALL {
            let w = u64::from(self.weight(format));
            if at < w {
                return format;
            }
            at -= w;
        }
        Format::Safetensors
    }
}

/// The steps of a model: a preset name (`pythia`) or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StepList {
    Preset(String),
    Steps(Vec<u64>),
}

impl Default for StepList {
    fn default() -> Self {
        StepList::Preset("pythia".into())
    }
}

/// Steps that all serve the weights of one other point of training, in one format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DuplicateGroup {
    /// The step whose weights they serve (it need not be one of the model's steps).
    pub content_step: u64,
    pub steps: Vec<u64>,
    /// Their format (default: the mix's draw for `content_step`).
    pub format: Option<Format>,
}

/// One virtual repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ModelDescription {
    /// `org/name`.
    pub repo: String,
    /// The preset shape (a name `synth --like` knows); default: the repo's name.
    pub like: Option<String>,
    #[serde(default)]
    pub steps: StepList,
    /// The format mix for this model (default: the description's).
    pub formats: Option<Formats>,
    #[serde(default)]
    pub duplicates: Vec<DuplicateGroup>,
}

impl ModelDescription {
    pub(crate) fn preset(&self) -> anyhow::Result<Preset> {
        let name = self.like.as_deref().unwrap_or(&self.repo);
        find_preset(name).with_context(|| {
            format!(
                "{}: no model shape {name:?} (set `like` to a pythia-* name)",
                self.repo
            )
        })
    }

    pub(crate) fn step_list(&self) -> anyhow::Result<Vec<u64>> {
        let mut steps = match &self.steps {
            StepList::Preset(name) if name == "pythia" => pythia_steps(),
            StepList::Preset(name) => {
                anyhow::bail!("{}: unknown steps {name:?} (pythia, or a list)", self.repo)
            }
            StepList::Steps(steps) => steps.clone(),
        };
        steps.sort_unstable();
        steps.dedup();
        anyhow::ensure!(!steps.is_empty(), "{}: no steps", self.repo);
        Ok(steps)
    }
}

/// A virtual hub's repositories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    #[serde(default)]
    pub formats: Formats,
    pub models: Vec<ModelDescription>,
}

/// pythia-2.8b's duplicate branches (EleutherAI/pythia#205): 76 branches serve one
/// final-era file and 10 another, `model.safetensors` on all of them.
fn pythia_2p8b_duplicates() -> Vec<DuplicateGroup> {
    let mut first: Vec<u64> = vec![0];
    first.extend((0..10).map(|k| 1u64 << k));
    first.extend((1..=53).map(|k| k * 1000));
    first.extend([
        55000, 60000, 65000, 70000, 80000, 90000, 100000, 103000, 110000, 120000, 130000, 140000,
    ]);
    let second = vec![
        54000, 56000, 57000, 58000, 59000, 61000, 62000, 63000, 64000, 143000,
    ];
    vec![
        DuplicateGroup {
            // A final-era point no branch serves on its own.
            content_step: 142_500,
            steps: first,
            format: Some(Format::Safetensors),
        },
        DuplicateGroup {
            content_step: 143_000,
            steps: second,
            format: Some(Format::Safetensors),
        },
    ]
}

impl Description {
    /// The Pythia suite of `examples/pythia-suite.toml`: eight models, 154 steps each.
    pub fn pythia() -> Self {
        let repos = [
            "EleutherAI/pythia-14m",
            "EleutherAI/pythia-31m",
            "EleutherAI/pythia-70m-deduped",
            "EleutherAI/pythia-160m-deduped",
            "EleutherAI/pythia-410m-deduped",
            "EleutherAI/pythia-1b-deduped",
            "EleutherAI/pythia-1.4b-deduped",
            "EleutherAI/pythia-2.8b-deduped",
        ];
        let models = repos
            .into_iter()
            .map(|repo| ModelDescription {
                repo: repo.to_string(),
                like: None,
                steps: StepList::default(),
                formats: None,
                duplicates: if repo.contains("pythia-2.8b") {
                    pythia_2p8b_duplicates()
                } else {
                    Vec::new()
                },
            })
            .collect();
        Description {
            formats: Formats::default(),
            models,
        }
    }

    /// `pythia`, or a TOML file describing the repositories.
    pub fn load(name_or_path: &str) -> anyhow::Result<Self> {
        if name_or_path == "pythia" {
            return Ok(Description::pythia());
        }
        let text = std::fs::read_to_string(name_or_path)
            .with_context(|| format!("cannot read the virtual hub description {name_or_path}"))?;
        toml::from_str(&text).with_context(|| format!("{name_or_path} is not a valid description"))
    }

    /// Keeps only the models whose repo or name is in `models` (all when empty) and the
    /// steps in `steps` (all when empty).
    pub fn restrict(&mut self, models: &[String], steps: &[u64]) -> anyhow::Result<()> {
        if !models.is_empty() {
            let wanted = |m: &ModelDescription| {
                models
                    .iter()
                    .any(|w| m.repo == *w || m.repo.rsplit('/').next() == Some(w.as_str()))
            };
            self.models.retain(wanted);
            anyhow::ensure!(!self.models.is_empty(), "no model matches {models:?}");
        }
        if !steps.is_empty() {
            let keep: BTreeSet<u64> = steps.iter().copied().collect();
            for model in &mut self.models {
                let kept: Vec<u64> = model
                    .step_list()?
                    .into_iter()
                    .filter(|s| keep.contains(s))
                    .collect();
                anyhow::ensure!(!kept.is_empty(), "{}: none of steps {steps:?}", model.repo);
                model.steps = StepList::Steps(kept);
                for group in &mut model.duplicates {
                    group.steps.retain(|s| keep.contains(s));
                }
                model.duplicates.retain(|g| !g.steps.is_empty());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pythia_suite_matches_the_example_spec() {
        let suite = Description::pythia();
        assert_eq!(suite.models.len(), 8);
        for model in &suite.models {
            assert!(model.preset().is_ok(), "{}", model.repo);
            assert_eq!(model.step_list().unwrap().len(), 154);
        }
        let big = &suite.models[7];
        let groups = &big.duplicates;
        assert_eq!(groups[0].steps.len(), 76);
        assert_eq!(groups[1].steps.len(), 10);
        let steps: BTreeSet<u64> = big.step_list().unwrap().into_iter().collect();
        let grouped: BTreeSet<u64> = groups.iter().flat_map(|g| g.steps.clone()).collect();
        assert_eq!(grouped.len(), 86, "no step is in two groups");
        assert!(grouped.is_subset(&steps));
        assert!((0..=6300)
            .filter(|s| steps.contains(s))
            .all(|s| grouped.contains(&s)));
    }

    #[test]
    fn descriptions_read_from_toml_and_restrict() {
        let mut d: Description = toml::from_str(
            r#"
            [formats]
            bin = 0
            safetensors = 1
            [[models]]
            repo = "test/tiny"
            like = "pythia-14m"
            steps = [0, 10, 20]
            [[models.duplicates]]
            content-step = 15
            steps = [10, 20]
            format = "bin-sharded"
            [[models]]
            repo = "EleutherAI/pythia-31m"
            "#,
        )
        .unwrap();
        assert_eq!(d.models[1].step_list().unwrap().len(), 154);
        d.restrict(&["tiny".into()], &[0, 20]).unwrap();
        assert_eq!(d.models.len(), 1);
        assert_eq!(d.models[0].steps, StepList::Steps(vec![0, 20]));
        assert_eq!(d.models[0].duplicates[0].steps, vec![20]);
        assert!(d.clone().restrict(&["nothing".into()], &[]).is_err());
        assert!(
            toml::from_str::<Description>("models = [{ repo = \"a/b\", colour = 1 }]").is_err()
        );
    }

    #[test]
    fn the_mix_follows_its_weights() {
        let mix = Formats::default();
        let mut counts = [0usize; 4];
        for draw in 0..4000u64 {
            let at = Format::ALL
                .iter()
                .position(|f| *f == mix.pick(draw))
                .unwrap();
            counts[at] += 1;
        }
        assert_eq!(counts, [2000, 0, 1000, 1000]);
    }
}
