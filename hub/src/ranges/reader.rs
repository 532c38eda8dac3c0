//! The elements a ranged fetch brought, as a [`WeightReader`]: the same values the memory-
//! mapped checkpoint gives for the seeds the fetch was planned for, and an error for any
//! other element.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::PathBuf;

use neuromfa_common::network::WeightReader;
use neuromfa_common::{BlockTensor, Error, ModelShape};

use super::plan::{ByteRun, PlanSummary, Site};
use super::FetchMetrics;

/// The needed bytes of one file: its runs, and their bytes back to back.
pub(crate) struct HeldBytes {
    /// Sorted, disjoint.
    pub(crate) runs: Vec<ByteRun>,
    pub(crate) arena: Vec<u8>,
}

impl HeldBytes {
    /// The `len` bytes at absolute offset `offset`, if they were fetched.
    fn bytes(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let i = self
            .runs
            .partition_point(|r| r.start <= offset)
            .checked_sub(1)?;
        let run = self.runs[i];
        if offset + len as u64 > run.end {
            return None;
        }
        let at = run.at + (offset - run.start) as usize;
        self.arena.get(at..at + len)
    }
}

/// The elements some seeds read from a checkpoint, fetched by ranges. A [`WeightReader`]
/// for exactly those seeds (at the `layer_sample` they were planned with); reading any other
/// element is an error.
pub struct RangedCheckpoint {
    pub(super) repo: String,
    pub(super) revision: String,
    pub(super) commit: String,
    pub(super) shape: ModelShape,
    pub(super) sites: HashMap<(usize, BlockTensor), Site>,
    pub(super) files: Vec<HeldFile>,
    pub(super) seeds: Vec<u32>,
    pub(super) layer_sample: usize,
    pub(super) plan: PlanSummary,
    pub(super) metrics: FetchMetrics,
}

/// One weight file and its needed bytes.
pub(super) struct HeldFile {
    /// `org/name@revision/file`, for error messages.
    pub(super) path: PathBuf,
    pub(super) name: String,
    pub(super) size: u64,
    pub(super) held: HeldBytes,
}

impl fmt::Debug for RangedCheckpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RangedCheckpoint")
            .field("repo", &self.repo)
            .field("revision", &self.revision)
            .field("commit", &self.commit)
            .field("shape", &self.shape)
            .field("seeds", &self.seeds)
            .field("layer_sample", &self.layer_sample)
            .field("plan", &self.plan)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl RangedCheckpoint {
    pub fn repo(&self) -> &str {
        &self.repo
    }

    /// The revision as asked for.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The commit it resolved to; every range was read at this commit.
    pub fn commit(&self) -> &str {
        &self.commit
    }

    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }

    /// The seeds whose samples were fetched.
    pub fn seeds(&self) -> &[u32] {
        &self.seeds
    }

    pub fn layer_sample(&self) -> usize {
        self.layer_sample
    }

    pub fn plan(&self) -> &PlanSummary {
        &self.plan
    }

    pub fn metrics(&self) -> &FetchMetrics {
        &self.metrics
    }

    /// The weight files: name and size.
    pub fn files(&self) -> impl Iterator<Item = (&str, u64)> {
        self.files.iter().map(|f| (f.name.as_str(), f.size))
    }

    /// Bytes held in memory (the needed elements only, not whole requests).
    pub fn held_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.held.arena.len() as u64).sum()
    }
}

impl WeightReader for RangedCheckpoint {
    fn shape(&self) -> &ModelShape {
        &self.shape
    }

    /// As [`Checkpoint::gather`], element by element in the same order, with the same
    /// decoding and the same error for a non-finite weight.
    ///
    /// [`Checkpoint::gather`]: neuromfa_common::Checkpoint::gather
    fn gather(
        &self,
        block: usize,
        tensor: BlockTensor,
        rows: &[usize],
        cols: &[usize],
    ) -> Result<Vec<f64>, Error> {
        let site = self.site(block, tensor)?;
        let mut values = Vec::with_capacity(rows.len() * cols.len());
        for &row in rows {
            for &col in cols {
                values.push(self.element(site, row, col)?);
            }
        }
        Ok(values)
    }
}

impl RangedCheckpoint {
    fn site(&self, block: usize, tensor: BlockTensor) -> Result<&Site, Error> {
        self.sites
            .get(&(block, tensor))
            .ok_or_else(|| Error::MissingTensor {
                dir: PathBuf::from(format!("{}@{}", self.repo, self.revision)),
                tensor: tensor.name(block),
            })
    }

    /// `W[row, col]` of the tensor at `site`, if it was fetched and is finite.
    fn element(&self, site: &Site, row: usize, col: usize) -> Result<f64, Error> {
        let layout = &site.layout;
        if row >= layout.shape[0] || col >= layout.shape[1] {
            return Err(Error::InvalidParameter(format!(
                "[{row}, {col}] is outside tensor `{}` of shape {:?}",
                site.name, layout.shape
            )));
        }
        let file = &self.files[site.file];
        let size = layout.element.size();
        let offset = layout.element_offset(&[row, col]);
        let bytes = file.held.bytes(offset, size).ok_or_else(|| {
            Error::io(
                file.path.clone(),
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "element [{row}, {col}] of tensor `{}` (byte {offset}) was not fetched: \
                         the ranges were planned for seeds {:?} at layer_sample {}",
                        site.name, self.seeds, self.layer_sample
                    ),
                ),
            )
        })?;
        let value = layout.element.decode(bytes);
        if !value.is_finite() {
            return Err(Error::NonFiniteWeight {
                path: file.path.clone(),
                tensor: site.name.clone(),
                row,
                col,
                value,
            });
        }
        Ok(value)
    }
}
