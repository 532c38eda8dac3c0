//! Planning a ranged fetch, with no I/O: which byte runs of which files hold the elements
//! an analysis reads ([`neuromfa_common::read_plan`]), given where each weight matrix lies
//! (its [`TensorLayout`]: offset, element type, shape and strides, whatever the file
//! format); runs closer than the merge gap joined into requests (the gap priced by the
//! link, [`super::link`]), and no more requests than a bound.

use std::collections::HashMap;

use neuromfa_common::checkpoint::TensorLayout;
use neuromfa_common::network::Gather;
use neuromfa_common::{BlockTensor, Error};
use serde::Serialize;

/// Separate byte runs a plan may hold (16 bytes each while planning). A sample that dense
/// reads most of the files anyway: `Auto` fetches them whole, `Ranges` refuses.
pub(crate) const MAX_RUNS: usize = 16 << 20;

/// What a set of seeds reads from a checkpoint, and what fetching it by ranges costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlanSummary {
    /// Seeds planned for.
    pub seeds: usize,
    /// Element reads the samples make (an element read by two seeds counts twice).
    pub elements: u64,
    /// Distinct bytes those elements occupy.
    pub needed_bytes: u64,
    /// Bytes the merged requests cover: what a ranged fetch downloads.
    pub planned_bytes: u64,
    /// Ranged requests after merging.
    pub requests: usize,
    /// Total size of the checkpoint's weight files.
    pub file_bytes: u64,
    /// The merge gap used (grown past the one asked for when the requests were too many).
    pub merge_gap: u64,
    /// Requests that reading the layout took before planning: safetensors headers; for
    /// `.bin` files each zip's tail, `data.pkl` and the needed storages' local headers.
    pub layout_requests: usize,
    /// Bytes those requests read.
    pub layout_bytes: u64,
}

impl PlanSummary {
    /// Planned bytes as a share of the weight files.
    pub fn share(&self) -> f64 {
        self.planned_bytes as f64 / self.file_bytes.max(1) as f64
    }
}

/// Where one weight matrix lives.
#[derive(Debug, Clone)]
pub(crate) struct Site {
    pub(crate) name: String,
    /// Index of its file.
    pub(crate) file: usize,
    /// Its elements in that file: two dimensions, each stride in elements.
    pub(crate) layout: TensorLayout,
}

/// Where a checkpoint's weight matrices lie: the size of each weight file, and the site of
/// each block's tensors.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sites {
    pub(crate) file_sizes: Vec<u64>,
    pub(crate) by_tensor: HashMap<(usize, BlockTensor), Site>,
}

impl Sites {
    pub(crate) fn get(&self, block: usize, tensor: BlockTensor) -> Option<&Site> {
        self.by_tensor.get(&(block, tensor))
    }
}

/// A contiguous run of needed bytes, and where its copy lives in the file's arena.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ByteRun {
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// Position of `start`'s byte in the arena that holds the file's needed bytes.
    pub(crate) at: usize,
}

/// One ranged request: bytes `[start, end)` of a file, covering `runs` of its run list.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) file: usize,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) runs: std::ops::Range<usize>,
}

/// The byte runs to keep and the requests that fetch them.
pub(crate) struct Plan {
    /// Per file, sorted and disjoint.
    pub(crate) runs: Vec<Vec<ByteRun>>,
    /// Per file, the arena size (needed bytes).
    pub(crate) arena_len: Vec<usize>,
    pub(crate) requests: Vec<Request>,
    pub(crate) summary: PlanSummary,
}

/// Every byte range of `reads` (the element reads of `seeds` seeds' samples), merged into
/// requests where closer than `merge_gap`; when that makes more than `max_requests`, the
/// gap doubles until it does not. `None` when the samples are too fragmented to plan (more
/// than `max_runs` runs).
pub(crate) fn make_plan(
    sites: &Sites,
    reads: &[Gather],
    seeds: usize,
    merge_gap: u64,
    max_runs: usize,
    max_requests: usize,
) -> Result<Option<Plan>, Error> {
    let Some(lines) = NeededLines::of(sites, reads, max_runs)? else {
        return Ok(None);
    };
    let (runs, arena_len) = lines.into_runs(sites.file_sizes.len());
    let mut merge_gap = merge_gap;
    let mut requests = merge(&runs, merge_gap);
    while requests.len() > max_requests.max(1) {
        merge_gap = merge_gap.saturating_mul(2).max(1);
        requests = merge(&runs, merge_gap);
    }
    let summary = PlanSummary {
        seeds,
        elements: reads
            .iter()
            .map(|read| (read.rows.len() * read.cols.len()) as u64)
            .sum(),
        needed_bytes: arena_len.iter().map(|&n| n as u64).sum(),
        planned_bytes: requests.iter().map(|q| q.end - q.start).sum(),
        requests: requests.len(),
        file_bytes: sites.file_sizes.iter().sum(),
        merge_gap,
        layout_requests: 0,
        layout_bytes: 0,
    };
    Ok(Some(Plan {
        runs,
        arena_len,
        requests,
        summary,
    }))
}

/// The lines the reads touch, each with the stretches of elements it needs. A line is a
/// row when a matrix's columns are adjacent in its file (every safetensors matrix, and
/// `.bin` tensors stored row-major), a column when its rows are (a transposed view), and a
/// single element otherwise. A read's stretches are the same along every line it reads, so
/// they are kept once per read.
struct NeededLines {
    /// Per read: the element indices along its lines, as consecutive stretches
    /// `[first, last + 1)`.
    stretches: Vec<Vec<(u64, u64)>>,
    /// Per needed line: (file, byte offset of its element 0, element size, index into
    /// `stretches`).
    lines: Vec<(usize, u64, u64, usize)>,
}

/// Indices as consecutive stretches `[first, last + 1)`.
fn stretches_of(indices: &[usize]) -> Vec<(u64, u64)> {
    let mut sorted = indices.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut stretches: Vec<(u64, u64)> = Vec::new();
    for &i in &sorted {
        let i = i as u64;
        match stretches.last_mut() {
            Some(last) if last.1 == i => last.1 = i + 1,
            _ => stretches.push((i, i + 1)),
        }
    }
    stretches
}

impl NeededLines {
    /// `None` when the reads make more than `max_runs` separate runs.
    fn of(sites: &Sites, reads: &[Gather], max_runs: usize) -> Result<Option<Self>, Error> {
        let mut needed = NeededLines {
            stretches: Vec::with_capacity(reads.len()),
            lines: Vec::new(),
        };
        let mut count = 0usize;
        for read in reads {
            let site = sites.get(read.block, read.tensor).ok_or_else(|| {
                Error::InvalidParameter(format!(
                    "no tensor {} in the layout",
                    read.tensor.name(read.block)
                ))
            })?;
            let layout = &site.layout;
            let size = layout.element.size() as u64;
            let [row_step, col_step] = [0, 1].map(|d| layout.strides[d] as u64 * size);
            let at = needed.stretches.len();
            // Lines along which elements are adjacent, and the stretches along them.
            let (along, across, line_step) = if col_step == size {
                (&read.cols, &read.rows, Some(row_step))
            } else if row_step == size {
                (&read.rows, &read.cols, Some(col_step))
            } else {
                (&read.cols, &read.rows, None)
            };
            let (stretches, lines) = match line_step {
                Some(_) => (stretches_of(along), across.len()),
                None => (
                    vec![(0, 1)],
                    read.rows.len().saturating_mul(read.cols.len()),
                ),
            };
            count = count.saturating_add(lines.saturating_mul(stretches.len()));
            if count > max_runs {
                return Ok(None);
            }
            needed.stretches.push(stretches);
            let line = |offset: u64| (site.file, layout.offset + offset, size, at);
            match line_step {
                Some(step) => needed
                    .lines
                    .extend(across.iter().map(|&i| line(i as u64 * step))),
                // Neither dimension is adjacent: every element is a line of its own.
                None => needed.lines.extend(read.rows.iter().flat_map(|&r| {
                    let row = r as u64 * row_step;
                    read.cols
                        .iter()
                        .map(move |&c| line(row + c as u64 * col_step))
                })),
            }
        }
        Ok(Some(needed))
    }

    /// Per file, the sorted disjoint runs of needed bytes with their arena positions, and
    /// the arena's size.
    fn into_runs(mut self, files: usize) -> (Vec<Vec<ByteRun>>, Vec<usize>) {
        // Lines of one matrix never overlap one another, so lines in file order give pieces
        // in file order: only the lines are sorted (tens of thousands), not the pieces (a
        // million for ten seeds). Lines that do overlap (tensors viewing the same bytes)
        // are noticed and planned piece by piece instead.
        self.lines.sort_unstable();
        match self.runs_in_line_order(files) {
            Some(runs) => runs,
            None => self.runs_piece_by_piece(files),
        }
    }

    /// Runs from the pieces of the sorted lines, `None` if a piece comes out of order.
    fn runs_in_line_order(&self, files: usize) -> Option<(Vec<Vec<ByteRun>>, Vec<usize>)> {
        let mut runs: Vec<Vec<ByteRun>> = vec![Vec::new(); files];
        // Per file, the needed bytes so far: where the next run goes in the file's arena.
        let mut arena_len = vec![0usize; files];
        let mut shared_line: Vec<(u64, u64)> = Vec::new();
        for group in self.lines.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
            let (file, offset, size, _) = group[0];
            let bytes = |&(c0, c1): &(u64, u64)| (offset + c0 * size, offset + c1 * size);
            let (file_runs, at) = (&mut runs[file], &mut arena_len[file]);
            let in_order = if let [(.., only)] = group {
                self.stretches[*only]
                    .iter()
                    .all(|piece| add_piece(file_runs, at, bytes(piece)))
            } else {
                // A line several reads need (seeds drawing the same neuron): their
                // stretches interleave.
                shared_line.clear();
                shared_line.extend(
                    group
                        .iter()
                        .flat_map(|&(.., i)| self.stretches[i].iter().map(bytes)),
                );
                shared_line.sort_unstable();
                shared_line
                    .iter()
                    .all(|&piece| add_piece(file_runs, at, piece))
            };
            if !in_order {
                return None;
            }
        }
        Some((runs, arena_len))
    }

    /// Runs from every piece, sorted: for lines that overlap.
    fn runs_piece_by_piece(&self, files: usize) -> (Vec<Vec<ByteRun>>, Vec<usize>) {
        let mut pieces: Vec<(usize, u64, u64)> = self
            .lines
            .iter()
            .flat_map(|&(file, offset, size, i)| {
                self.stretches[i]
                    .iter()
                    .map(move |&(c0, c1)| (file, offset + c0 * size, offset + c1 * size))
            })
            .collect();
        pieces.sort_unstable();
        let mut runs: Vec<Vec<ByteRun>> = vec![Vec::new(); files];
        let mut arena_len = vec![0usize; files];
        for (file, start, end) in pieces {
            // Sorted: always in order.
            add_piece(&mut runs[file], &mut arena_len[file], (start, end));
        }
        (runs, arena_len)
    }
}

/// Appends the byte range `(start, end)` to `runs`: touching or overlapping ranges (an
/// element two seeds read) extend the last run. `at` is the arena position of the next new
/// byte. `false`, and nothing added, when the range starts before the last run: ranges
/// must come in order.
fn add_piece(runs: &mut Vec<ByteRun>, at: &mut usize, (start, end): (u64, u64)) -> bool {
    match runs.last_mut() {
        Some(last) if start < last.start => return false,
        Some(last) if start <= last.end => {
            if end > last.end {
                *at += (end - last.end) as usize;
                last.end = end;
            }
        }
        _ => {
            runs.push(ByteRun {
                start,
                end,
                at: *at,
            });
            *at += (end - start) as usize;
        }
    }
    true
}

/// Per file, runs closer than `merge_gap` share a request.
fn merge(runs: &[Vec<ByteRun>], merge_gap: u64) -> Vec<Request> {
    let mut requests = Vec::new();
    for (file, file_runs) in runs.iter().enumerate() {
        let mut first = 0;
        for i in 0..file_runs.len() {
            let last_of_request =
                i + 1 == file_runs.len() || file_runs[i + 1].start - file_runs[i].end > merge_gap;
            if last_of_request {
                requests.push(Request {
                    file,
                    start: file_runs[first].start,
                    end: file_runs[i].end,
                    runs: first..i + 1,
                });
                first = i + 1;
            }
        }
    }
    requests
}

#[cfg(test)]
mod tests {
    use neuromfa_common::network::gathers;
    use neuromfa_common::sampler::draw_snin;
    use neuromfa_common::{read_plan, AnalysisParams, ModelShape, ReadPlan};

    use neuromfa_common::checkpoint::ElementType;

    use super::*;

    #[test]
    fn fetch_mode_parses_and_prints_lowercase() {
        use neuromfa_common::checkpoint::FetchMode;
        for mode in [FetchMode::Full, FetchMode::Ranges, FetchMode::Auto] {
            assert_eq!(mode.to_string().parse::<FetchMode>(), Ok(mode));
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{mode}\""));
            assert_eq!(serde_json::from_str::<FetchMode>(&json).unwrap(), mode);
        }
        assert!("Ranges".parse::<FetchMode>().is_err());
    }

    fn shape(hidden: usize, blocks: usize) -> ModelShape {
        ModelShape {
            hidden_size: hidden,
            num_blocks: blocks,
            intermediate_size: 4 * hidden,
        }
    }

    /// One f16 file holding every matrix of `shape`, back to back after a 1000-byte header.
    fn sites(shape: &ModelShape) -> Sites {
        let mut by_tensor = HashMap::new();
        let mut start = 1000u64;
        for block in 0..shape.num_blocks {
            for tensor in BlockTensor::ALL {
                let [rows, cols] = tensor.expected_shape(shape);
                let layout = TensorLayout::contiguous("f", start, ElementType::F16, &[rows, cols]);
                by_tensor.insert(
                    (block, tensor),
                    Site {
                        name: tensor.name(block),
                        file: 0,
                        layout,
                    },
                );
                start += (rows * cols * 2) as u64;
            }
        }
        Sites {
            file_sizes: vec![start],
            by_tensor,
        }
    }

    /// What one-hop analyses of `seeds` at `layer_sample` read.
    fn reads(shape: &ModelShape, layer_sample: usize, seeds: &[u32]) -> Vec<Gather> {
        let params = AnalysisParams {
            layer_sample,
            ..AnalysisParams::default()
        };
        match read_plan(&params, shape, seeds).unwrap() {
            ReadPlan::Elements(reads) => reads,
            ReadPlan::WholeFiles => panic!("one-hop reads elements"),
        }
    }

    #[test]
    fn plan_covers_every_element_and_merges_by_gap() {
        let shape = shape(64, 2);
        let sites = sites(&shape);
        let reads = reads(&shape, 4, &[0, 1]);
        let exact = make_plan(&sites, &reads, 2, 0, MAX_RUNS, usize::MAX)
            .unwrap()
            .unwrap();
        let merged = make_plan(&sites, &reads, 2, 4096, MAX_RUNS, usize::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(exact.summary.needed_bytes, merged.summary.needed_bytes);
        assert!(merged.summary.requests < exact.summary.requests);
        assert!(merged.summary.planned_bytes >= exact.summary.planned_bytes);
        assert!(exact.summary.planned_bytes == exact.summary.needed_bytes);
        // Every element of every read lies inside a run and a request.
        for seed in [0, 1] {
            let draw = draw_snin(seed, &shape, 4).unwrap();
            for read in gathers(&draw, 64) {
                let site = &sites.by_tensor[&(read.block, read.tensor)];
                for &r in &read.rows {
                    for &c in &read.cols {
                        let o = site.layout.element_offset(&[r, c]);
                        for plan in [&exact, &merged] {
                            assert!(plan.runs[0]
                                .iter()
                                .any(|run| run.start <= o && o + 2 <= run.end));
                            assert!(plan.requests.iter().any(|q| q.start <= o && o + 2 <= q.end));
                        }
                    }
                }
            }
        }
        // Runs and requests are sorted and disjoint.
        for w in merged.runs[0].windows(2) {
            assert!(w[0].end < w[1].start);
        }
        for w in merged.requests.windows(2) {
            assert!(w[0].end + 4096 < w[1].start);
        }
    }

    #[test]
    fn too_fragmented_samples_are_not_planned() {
        let shape = shape(64, 2);
        let sites = sites(&shape);
        let one = reads(&shape, 4, &[0]);
        let runs = |plan: Option<Plan>| plan.unwrap().runs[0].len();
        let needed = runs(make_plan(&sites, &one, 1, 0, MAX_RUNS, usize::MAX).unwrap());
        assert!(make_plan(&sites, &one, 1, 0, needed / 2, usize::MAX)
            .unwrap()
            .is_none());
        // Consecutive columns and rows coalesce: a dense sample has far fewer runs than reads.
        let dense = make_plan(&sites, &reads(&shape, 64, &[0]), 1, 0, MAX_RUNS, usize::MAX)
            .unwrap()
            .unwrap();
        assert!((dense.runs[0].len() as u64) < dense.summary.elements / 4);
    }

    #[test]
    fn too_many_requests_grow_the_gap_until_they_fit() {
        let shape = shape(64, 2);
        let sites = sites(&shape);
        let reads = reads(&shape, 8, &[0, 1]);
        let free = make_plan(&sites, &reads, 2, 0, MAX_RUNS, usize::MAX)
            .unwrap()
            .unwrap();
        let bound = free.summary.requests / 4;
        let bounded = make_plan(&sites, &reads, 2, 0, MAX_RUNS, bound)
            .unwrap()
            .unwrap();
        assert!(bounded.summary.requests <= bound, "{:?}", bounded.summary);
        assert!(bounded.summary.merge_gap > 0);
        assert_eq!(bounded.summary.needed_bytes, free.summary.needed_bytes);
        assert!(bounded.summary.planned_bytes > free.summary.planned_bytes);
    }

    /// The needed bytes of `reads`, element by element, merged where they touch: what a plan
    /// with no merge gap must hold, in file 0.
    fn brute_force_runs(sites: &Sites, reads: &[Gather]) -> Vec<(u64, u64)> {
        let mut pieces: Vec<(u64, u64)> = Vec::new();
        for read in reads {
            let layout = &sites.by_tensor[&(read.block, read.tensor)].layout;
            let size = layout.element.size() as u64;
            for &r in &read.rows {
                for &c in &read.cols {
                    let o = layout.element_offset(&[r, c]);
                    pieces.push((o, o + size));
                }
            }
        }
        pieces.sort_unstable();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (start, end) in pieces {
            match runs.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => runs.push((start, end)),
            }
        }
        runs
    }

    /// `sites` with `tensor`'s layout in every block replaced by `relayout` of it.
    fn relaid(
        mut sites: Sites,
        tensor: BlockTensor,
        relayout: impl Fn(&TensorLayout) -> TensorLayout,
    ) -> Sites {
        for ((_, t), site) in sites.by_tensor.iter_mut() {
            if *t == tensor {
                site.layout = relayout(&site.layout);
            }
        }
        sites
    }

    /// Plans `reads` with no merge gap and checks the runs against the brute force, their
    /// arena positions against their lengths, and the requests against the runs.
    fn assert_exact(sites: &Sites, reads: &[Gather]) -> Plan {
        let plan = make_plan(sites, reads, 1, 0, MAX_RUNS, usize::MAX)
            .unwrap()
            .unwrap();
        let runs: Vec<(u64, u64)> = plan.runs[0].iter().map(|r| (r.start, r.end)).collect();
        assert_eq!(runs, brute_force_runs(sites, reads));
        let mut at = 0;
        for run in &plan.runs[0] {
            assert_eq!(run.at, at);
            at += (run.end - run.start) as usize;
        }
        assert_eq!(plan.arena_len[0], at);
        assert_eq!(plan.summary.planned_bytes, at as u64);
        plan
    }

    #[test]
    fn strided_tensors_are_planned_element_by_element_exactly() {
        let shape = shape(64, 2);
        let reads = reads(&shape, 8, &[0, 1, 2]);
        // Row-major: the plan of every safetensors file.
        let row_major = sites(&shape);
        let contiguous = assert_exact(&row_major, &reads);
        // MLP-down stored transposed, as a `.bin` view with strides (1, rows) may be: its
        // columns are the adjacent elements now, in the same bytes.
        let transposed = relaid(row_major.clone(), BlockTensor::MlpDown, |l| TensorLayout {
            strides: vec![1, l.shape[0]],
            ..l.clone()
        });
        let plan = assert_exact(&transposed, &reads);
        assert_eq!(plan.summary.elements, contiguous.summary.elements);
        assert_ne!(plan.summary.requests, contiguous.summary.requests);
        // Every other element of a twice-as-long storage: no dimension is adjacent.
        let spread = relaid(row_major.clone(), BlockTensor::Qkv, |l| TensorLayout {
            strides: vec![2 * l.shape[1], 2],
            ..l.clone()
        });
        assert_exact(&spread, &reads);
    }

    #[test]
    fn tensors_viewing_the_same_bytes_are_planned_in_file_order() {
        let shape = shape(64, 2);
        let reads = reads(&shape, 8, &[0, 1]);
        let sites = sites(&shape);
        // Block 1's attention dense matrix views block 0's bytes from its second element,
        // transposed: its lines straddle block 0's rows.
        let block0 = sites.by_tensor[&(0, BlockTensor::AttentionDense)]
            .layout
            .clone();
        let mut aliased = sites.clone();
        if let Some(site) = aliased.by_tensor.get_mut(&(1, BlockTensor::AttentionDense)) {
            site.layout = TensorLayout {
                offset: block0.offset + 2,
                strides: vec![1, 64],
                ..block0
            };
        }
        let mut lines = NeededLines::of(&aliased, &reads, MAX_RUNS)
            .unwrap()
            .unwrap();
        lines.lines.sort_unstable();
        assert!(
            lines.runs_in_line_order(1).is_none(),
            "the lines overlap, so their pieces come out of order"
        );
        assert_exact(&aliased, &reads);
    }
}
