//! `ω = 1/|w|` of one transition's matrix, read as the plan asks: columns as contiguous
//! lines (input-major), rows as they are, in parallel.

use rayon::prelude::*;

use super::plan::{ReadKind, TransitionPlan};
use super::Transition;
use crate::error::Error;
use crate::network::{Gather, WeightReader};

/// `ω` of one transition's matrix `W[n_out, n_in]`, as far as the plan read it.
pub(super) struct Omega {
    pub(super) n_in: usize,
    pub(super) n_out: usize,
    /// Per input neuron read as a line, its position in `lines` (`ABSENT` otherwise).
    input_pos: Vec<u32>,
    /// `[lines × line_len]`: ω from the input neuron to every output neuron (or, when
    /// `line_rows` is set, to those output neurons only).
    pub(super) lines: Vec<f64>,
    pub(super) line_len: usize,
    /// Position of an output neuron within a line, when lines cover sampled rows only.
    line_rows: Option<Vec<u32>>,
    /// Per output neuron read as a row, its position in `rows` (`ABSENT` otherwise).
    output_pos: Vec<u32>,
    /// `[rows × n_in]`: ω from every input neuron to the output neuron.
    rows: Vec<f64>,
}

const ABSENT: u32 = u32::MAX;

fn positions(len: usize, present: &[usize]) -> Vec<u32> {
    let mut pos = vec![ABSENT; len];
    for (i, &p) in present.iter().enumerate() {
        pos[p] = i as u32;
    }
    pos
}

#[inline]
pub(super) fn omega_of(weight: f64) -> f64 {
    // A zero weight is no edge: 1/0 is +∞, which no min-plus step ever picks.
    1.0 / weight.abs()
}

/// Lines per gather when a read is split for parallelism: a few per thread, since every
/// gather of columns walks all the matrix's rows (and so all its pages) once.
fn read_chunk(lines: usize) -> usize {
    lines
        .div_ceil(2 * rayon::current_num_threads())
        .clamp(1, 256)
}

impl Omega {
    /// Reads what `plan` asks for. `Lines` columns and `Full` matrices arrive transposed
    /// (input-major), so a frontier hop streams contiguous memory.
    pub(super) fn read(reader: &dyn WeightReader, plan: &TransitionPlan) -> Result<Self, Error> {
        let Transition::Matrix { tensor, .. } = plan.transition else {
            return Err(Error::InvalidParameter(
                "attention has no weights to read".into(),
            ));
        };
        let [n_out, n_in] = tensor.expected_shape(reader.shape());
        let mut omega = Omega {
            n_in,
            n_out,
            input_pos: vec![ABSENT; n_in],
            lines: Vec::new(),
            line_len: n_out,
            line_rows: None,
            output_pos: vec![ABSENT; n_out],
            rows: Vec::new(),
        };
        match plan.kind {
            ReadKind::None => {}
            ReadKind::Sampled => {
                let read = &plan.reads[0];
                omega.input_pos = positions(n_in, &read.cols);
                omega.line_len = read.rows.len();
                omega.line_rows = Some(positions(n_out, &read.rows));
                omega.lines = read_lines(reader, read)?;
            }
            ReadKind::Lines | ReadKind::Full => {
                let columns = &plan.reads[0];
                omega.input_pos = positions(n_in, &columns.cols);
                omega.lines = read_lines(reader, columns)?;
                if let Some(rows) = plan.reads.get(1) {
                    omega.output_pos = positions(n_out, &rows.rows);
                    omega.rows = read_rows(reader, rows)?;
                }
            }
        }
        Ok(omega)
    }

    /// `ω(x, y)`; the plan guarantees it was read.
    pub(super) fn get(&self, y: usize, x: usize) -> f64 {
        let line = self.input_pos[x];
        if line != ABSENT {
            let within = match &self.line_rows {
                Some(pos) => pos[y] as usize,
                None => y,
            };
            return self.lines[line as usize * self.line_len + within];
        }
        self.rows[self.output_pos[y] as usize * self.n_in + x]
    }

    /// The least ω read: no hop across this transition adds less.
    pub(super) fn least(&self) -> f64 {
        self.lines
            .iter()
            .chain(&self.rows)
            .copied()
            .fold(f64::INFINITY, f64::min)
    }

    /// ω from input neuron `x` to every output neuron (`Lines` and `Full` reads).
    pub(super) fn line(&self, x: usize) -> &[f64] {
        let at = self.input_pos[x] as usize * self.line_len;
        &self.lines[at..at + self.line_len]
    }

    /// `[n_in × targets]`, input-major: ω from every input neuron to each of `targets`
    /// (whose rows were read, or all of whose matrix was).
    pub(super) fn towards(&self, targets: &[usize]) -> Vec<f64> {
        let n_t = targets.len();
        let mut out = vec![0.0; self.n_in * n_t];
        for (j, &t) in targets.iter().enumerate() {
            let row = self.output_pos[t];
            if row != ABSENT {
                let row = &self.rows[row as usize * self.n_in..(row as usize + 1) * self.n_in];
                for (slot, &w) in out.iter_mut().skip(j).step_by(n_t).zip(row) {
                    *slot = w;
                }
            } else {
                for (x, slot) in out.iter_mut().skip(j).step_by(n_t).enumerate() {
                    *slot = self.get(t, x);
                }
            }
        }
        out
    }
}

/// The gather's columns as lines `[cols × rows]` of ω (the transpose of what it reads).
fn read_lines(reader: &dyn WeightReader, read: &Gather) -> Result<Vec<f64>, Error> {
    let n_rows = read.rows.len();
    let mut lines = vec![0.0; read.cols.len() * n_rows];
    let chunk = read_chunk(read.cols.len());
    lines
        .par_chunks_mut(chunk * n_rows.max(1))
        .zip(read.cols.par_chunks(chunk))
        .try_for_each(|(out, cols)| {
            let weights = reader.gather(read.block, read.tensor, &read.rows, cols)?;
            for (r, row) in weights.chunks_exact(cols.len()).enumerate() {
                for (c, &w) in row.iter().enumerate() {
                    out[c * n_rows + r] = omega_of(w);
                }
            }
            Ok::<(), Error>(())
        })?;
    Ok(lines)
}

/// The gather's rows `[rows × cols]` of ω, as read.
fn read_rows(reader: &dyn WeightReader, read: &Gather) -> Result<Vec<f64>, Error> {
    let n_cols = read.cols.len();
    let mut rows = vec![0.0; read.rows.len() * n_cols];
    let chunk = read_chunk(read.rows.len());
    rows.par_chunks_mut(chunk * n_cols.max(1))
        .zip(read.rows.par_chunks(chunk))
        .try_for_each(|(out, rows)| {
            let weights = reader.gather(read.block, read.tensor, rows, &read.cols)?;
            for (slot, w) in out.iter_mut().zip(weights) {
                *slot = omega_of(w);
            }
            Ok::<(), Error>(())
        })?;
    Ok(rows)
}
