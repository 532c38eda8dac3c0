//! Reading the weights a sample needs from a checkpoint on local disk: safetensors
//! (`model.safetensors`, or shards with `model.safetensors.index.json`) or PyTorch `.bin`
//! files (`pytorch_model.bin`, or shards with `pytorch_model.bin.index.json`).
//!
//! Files are memory-mapped and only the elements of drawn rows and columns are ever
//! touched, so a 10-seed analysis of a multi-gigabyte checkpoint reads a few percent of
//! it. Both formats are reduced to one [`TensorLayout`] per tensor (file, offset of the
//! first element, element type, shape, strides), and every read goes through it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use memmap2::{Mmap, MmapOptions};
use safetensors::tensor::{Dtype, Metadata};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::layout::{BlockTensor, ModelShape};
use crate::torch::TorchFile;

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const TORCH_SINGLE_FILE: &str = "pytorch_model.bin";
pub const TORCH_INDEX_FILE: &str = "pytorch_model.bin.index.json";
pub const CONFIG_FILE: &str = "config.json";
const PAGE_SIZE: u64 = 4096;
/// The largest safetensors header accepted (the safetensors crate's own limit).
pub const MAX_SAFETENSORS_HEADER_LEN: u64 = 100_000_000;

/// How a checkpoint's weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightFormat {
    Safetensors,
    /// PyTorch's `torch.save` zip archives.
    PytorchBin,
}

impl WeightFormat {
    /// In the order [`choose_weight_files`] prefers them.
    pub const ALL: [WeightFormat; 2] = [WeightFormat::Safetensors, WeightFormat::PytorchBin];

    pub fn as_str(self) -> &'static str {
        match self {
            WeightFormat::Safetensors => "safetensors",
            WeightFormat::PytorchBin => "pytorch-bin",
        }
    }

    /// The file an unsharded checkpoint keeps its weights in.
    pub fn single_file(self) -> &'static str {
        match self {
            WeightFormat::Safetensors => SINGLE_FILE,
            WeightFormat::PytorchBin => TORCH_SINGLE_FILE,
        }
    }

    /// The index naming the shard of each tensor in a sharded checkpoint.
    pub fn index_file(self) -> &'static str {
        match self {
            WeightFormat::Safetensors => INDEX_FILE,
            WeightFormat::PytorchBin => TORCH_INDEX_FILE,
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WeightFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WeightFormat::ALL
            .into_iter()
            .find(|format| format.as_str() == s)
            .ok_or_else(|| {
                format!("unknown weight format {s:?}: expected safetensors or pytorch-bin")
            })
    }
}

/// Which weight files of a checkpoint to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WeightFiles {
    pub format: WeightFormat,
    /// Shards listed by [`WeightFormat::index_file`], rather than one
    /// [`WeightFormat::single_file`].
    pub sharded: bool,
}

impl WeightFiles {
    /// Every way a checkpoint may keep its weights, in the order [`choose_weight_files`]
    /// prefers them.
    pub const ALL: [WeightFiles; 4] = [
        WeightFiles {
            format: WeightFormat::Safetensors,
            sharded: false,
        },
        WeightFiles {
            format: WeightFormat::Safetensors,
            sharded: true,
        },
        WeightFiles {
            format: WeightFormat::PytorchBin,
            sharded: false,
        },
        WeightFiles {
            format: WeightFormat::PytorchBin,
            sharded: true,
        },
    ];

    /// The names [`choose_weight_files`] looks for in a listing, in its order: all a
    /// listing needs to hold for the choice.
    pub fn candidates() -> [&'static str; 4] {
        WeightFiles::ALL.map(WeightFiles::entry_file)
    }

    /// The file that names the weights: the single file, or the index of the shards.
    pub fn entry_file(self) -> &'static str {
        match self.sharded {
            true => self.format.index_file(),
            false => self.format.single_file(),
        }
    }
}

/// One weight file as the Hub describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightFileInfo {
    /// Path in the repository.
    pub name: String,
    pub size: u64,
    /// The LFS sha256 of its content.
    pub sha256: String,
}

/// What a revision serves, as the coordinator resolved it before leasing: the commit, the
/// weight files chosen from its listing, and each file (the shards of a sharded
/// checkpoint, not its index). Handed to workers with their leases, it saves them the
/// listing and the branch's resolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionWeights {
    pub commit: String,
    pub weights: WeightFiles,
    pub files: Vec<WeightFileInfo>,
}

/// Chooses a checkpoint's weights from the names of its files (a directory's, or a Hub
/// revision's top-level listing): `model.safetensors`, then `model.safetensors.index.json`,
/// then `pytorch_model.bin`, then `pytorch_model.bin.index.json`. `None` when there is none.
pub fn choose_weight_files<S: AsRef<str>>(listing: &[S]) -> Option<WeightFiles> {
    let has = |name: &str| listing.iter().any(|f| f.as_ref() == name);
    WeightFiles::ALL
        .into_iter()
        .find(|files| has(files.entry_file()))
}

/// Names what [`choose_weight_files`] looks for, for messages saying none was found.
pub fn weight_file_names() -> String {
    format!("{SINGLE_FILE}, {INDEX_FILE}, {TORCH_SINGLE_FILE} or {TORCH_INDEX_FILE}")
}

/// Says that a directory holds no weight file [`choose_weight_files`] knows.
fn no_weight_files() -> String {
    format!("no {} in this directory", weight_file_names())
}

/// The `weight_map` of a shard index (`model.safetensors.index.json` or
/// `pytorch_model.bin.index.json`): tensor name → shard file. Refuses text that is not such
/// an index, an empty map, and shard names that could climb out of the checkpoint's folder
/// (they become paths).
pub fn parse_shard_index(text: &str) -> Result<BTreeMap<String, String>, String> {
    let index: ShardIndex =
        serde_json::from_str(text).map_err(|e| format!("not a valid index of shards: {e}"))?;
    if index.weight_map.is_empty() {
        return Err("the weight_map is empty".to_string());
    }
    for shard in index.weight_map.values() {
        let safe = shard
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains(['\\', '\0']));
        if !safe {
            return Err(format!(
                "the weight_map names an unsafe shard path {shard:?}"
            ));
        }
    }
    Ok(index.weight_map)
}

/// Element types a checkpoint may store weights in; all are widened to f64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    F32,
    F16,
    BF16,
}

impl ElementType {
    pub fn size(self) -> usize {
        match self {
            ElementType::F32 => 4,
            ElementType::F16 | ElementType::BF16 => 2,
        }
    }

    /// The element type of a safetensors dtype, if weights may be stored in it.
    pub fn from_dtype(dtype: Dtype) -> Option<Self> {
        match dtype {
            Dtype::F32 => Some(ElementType::F32),
            Dtype::F16 => Some(ElementType::F16),
            Dtype::BF16 => Some(ElementType::BF16),
            _ => None,
        }
    }

    /// Widens one little-endian element (`bytes` holds at least [`Self::size`] bytes) to
    /// f64, exactly. Public so that readers of ranged downloads decode identically.
    #[inline]
    pub fn decode(self, bytes: &[u8]) -> f64 {
        match self {
            ElementType::F32 => {
                f64::from(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            }
            ElementType::F16 => half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f64(),
            ElementType::BF16 => half::bf16::from_le_bytes([bytes[0], bytes[1]]).to_f64(),
        }
    }
}

/// Where a tensor's elements are, whatever the file format: the safetensors and the
/// PyTorch readers both give one, and every read goes through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorLayout {
    /// The file holding the tensor, as the checkpoint names it (its index's `weight_map`).
    pub file: String,
    /// Absolute byte offset of element `[0, …, 0]` in the file.
    pub offset: u64,
    pub element: ElementType,
    pub shape: Vec<usize>,
    /// Per dimension, in elements.
    pub strides: Vec<usize>,
}

impl TensorLayout {
    /// A row-major tensor whose elements follow each other from `offset`.
    pub fn contiguous(file: &str, offset: u64, element: ElementType, shape: &[usize]) -> Self {
        let mut strides = vec![1; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        TensorLayout {
            file: file.to_string(),
            offset,
            element,
            shape: shape.to_vec(),
            strides,
        }
    }

    /// Absolute byte offset of the element at `index` (one coordinate per dimension, each
    /// below the shape's).
    #[inline]
    pub fn element_offset(&self, index: &[usize]) -> u64 {
        let element: usize = index.iter().zip(&self.strides).map(|(i, s)| i * s).sum();
        self.offset + (element * self.element.size()) as u64
    }

    /// One past the last byte any element occupies (the offset itself when empty).
    pub fn end(&self) -> u64 {
        if self.shape.contains(&0) {
            return self.offset;
        }
        let last: Vec<usize> = self.shape.iter().map(|n| n - 1).collect();
        self.element_offset(&last) + self.element.size() as u64
    }
}

/// Where one weight matrix lives.
#[derive(Debug, Clone)]
struct TensorLocation {
    name: String,
    file: usize,
    layout: TensorLayout,
}

/// A weight file's format-specific index of its tensors.
enum Contents {
    Safetensors {
        /// `8 +` the header's length.
        data_start: u64,
        metadata: Metadata,
    },
    Torch(TorchFile),
}

struct MappedFile {
    /// As the checkpoint names it.
    name: String,
    path: PathBuf,
    map: Mmap,
    contents: Contents,
    /// Pages of this file that `gather` has read, when accounting is on.
    touched_pages: Mutex<HashSet<u64>>,
}

/// The edge-carrying weights of one GPT-NeoX checkpoint, mapped and validated.
pub struct Checkpoint {
    dir: PathBuf,
    shape: ModelShape,
    files: Vec<MappedFile>,
    tensors: HashMap<(usize, BlockTensor), TensorLocation>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Opens the checkpoint in `dir`: `config.json` plus the weight files
    /// [`choose_weight_files`] picks from the directory. Checks that every tensor the
    /// network needs is present with the right shape and a supported dtype, and lies
    /// within its file.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let shape = ModelShape::from_config_file(&dir.join(CONFIG_FILE))?;
        let needed: Vec<(usize, BlockTensor)> = (0..shape.num_blocks)
            .flat_map(|b| BlockTensor::ALL.into_iter().map(move |t| (b, t)))
            .collect();
        let (format, file_of) = files_of(dir, &needed)?;

        let mut files: Vec<MappedFile> = Vec::new();
        let mut file_ids: HashMap<String, usize> = HashMap::new();
        let mut tensors = HashMap::new();
        for (block, tensor) in needed {
            let name = tensor.name(block);
            let file_name = file_of.get(&name).ok_or_else(|| Error::MissingTensor {
                dir: dir.to_path_buf(),
                tensor: name.clone(),
            })?;
            let file = match file_ids.get(file_name) {
                Some(&id) => id,
                None => {
                    files.push(map_file(dir, file_name, format)?);
                    file_ids.insert(file_name.clone(), files.len() - 1);
                    files.len() - 1
                }
            };
            let layout = files[file].layout(&name, dir)?;
            check_matrix(&files[file], &name, &layout, tensor.expected_shape(&shape))?;
            tensors.insert((block, tensor), TensorLocation { name, file, layout });
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            shape,
            files,
            tensors,
        })
    }

    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Total size of the mapped weight files in bytes.
    pub fn mapped_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.map.len() as u64).sum()
    }

    /// Bytes of the files that `gather` has read so far, counted in whole 4 KiB pages.
    pub fn touched_bytes(&self) -> u64 {
        self.files
            .iter()
            .map(|f| f.touched_pages.lock().map(|p| p.len() as u64).unwrap_or(0) * PAGE_SIZE)
            .sum()
    }

    /// Where a needed tensor's elements are (a block's weight matrix).
    pub fn layout(&self, block: usize, tensor: BlockTensor) -> Option<&TensorLayout> {
        self.tensors.get(&(block, tensor)).map(|l| &l.layout)
    }

    /// `W[rows[i], cols[j]]` for every pair, row-major, widened to f64. Touches only
    /// those elements. A non-finite weight is an error naming the tensor and position.
    pub fn gather(
        &self,
        block: usize,
        tensor: BlockTensor,
        rows: &[usize],
        cols: &[usize],
    ) -> Result<Vec<f64>, Error> {
        let location = self
            .tensors
            .get(&(block, tensor))
            .ok_or_else(|| Error::MissingTensor {
                dir: self.dir.clone(),
                tensor: tensor.name(block),
            })?;
        let layout = &location.layout;
        let file = &self.files[location.file];
        // Within the shape, every element lies in the file (checked when opened).
        let outside = |limit: usize, index: Option<&usize>| index.is_some_and(|&i| i >= limit);
        if outside(layout.shape[0], rows.iter().max())
            || outside(layout.shape[1], cols.iter().max())
        {
            return Err(Error::InvalidParameter(format!(
                "rows or columns outside `{}` {:?}",
                location.name, layout.shape
            )));
        }
        let element_size = layout.element.size();
        // `element_offset` taken apart, the row's part hoisted: whole rows and columns are
        // millions of elements. A matrix's layout has two strides (checked when opened).
        let [row_step, col_step] = [0, 1].map(|d| (layout.strides[d] * element_size) as u64);
        let mut values = Vec::with_capacity(rows.len() * cols.len());
        let mut pages = Vec::with_capacity(rows.len());
        let (mut lowest, mut highest) = (u64::MAX, 0u64);
        for &row in rows {
            let row_start = layout.offset + row as u64 * row_step;
            for &col in cols {
                let offset = row_start + col as u64 * col_step;
                let at = offset as usize;
                let value = layout.element.decode(&file.map[at..at + element_size]);
                if !value.is_finite() {
                    return Err(Error::NonFiniteWeight {
                        path: file.path.clone(),
                        tensor: location.name.clone(),
                        row,
                        col,
                        value,
                    });
                }
                values.push(value);
                // Neighbouring elements share pages; whole rows and columns would otherwise
                // list every page thousands of times.
                let page = offset / PAGE_SIZE;
                if pages.last() != Some(&page) {
                    pages.push(page);
                }
                lowest = lowest.min(offset);
                highest = highest.max(offset);
            }
        }
        if !values.is_empty() {
            file.release(lowest, highest + element_size as u64);
        }
        if let Ok(mut touched) = file.touched_pages.lock() {
            touched.extend(pages);
        }
        Ok(values)
    }
}

/// The format of the weight files the directory offers, and which file holds each needed
/// tensor.
fn files_of(
    dir: &Path,
    needed: &[(usize, BlockTensor)],
) -> Result<(WeightFormat, HashMap<String, String>), Error> {
    let listing: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    let files = choose_weight_files(&listing).ok_or_else(|| Error::Config {
        path: dir.to_path_buf(),
        message: no_weight_files(),
    })?;
    if !files.sharded {
        let single = files.format.single_file().to_string();
        let file_of = needed.iter().map(|&(b, t)| (t.name(b), single.clone()));
        return Ok((files.format, file_of.collect()));
    }
    let index_path = dir.join(files.format.index_file());
    let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
    let weight_map = parse_shard_index(&text).map_err(|message| Error::Config {
        path: index_path.clone(),
        message,
    })?;
    Ok((files.format, weight_map.into_iter().collect()))
}

/// Refuses a layout that is not the expected matrix or runs past its file.
fn check_matrix(
    mapped: &MappedFile,
    name: &str,
    layout: &TensorLayout,
    expected: [usize; 2],
) -> Result<(), Error> {
    if layout.shape != expected {
        return Err(Error::WrongShape {
            path: mapped.path.clone(),
            tensor: name.to_string(),
            found: layout.shape.clone(),
            expected: expected.to_vec(),
        });
    }
    if layout.end() > mapped.map.len() as u64 {
        return Err(Error::CorruptFile {
            path: mapped.path.clone(),
            message: format!("tensor `{name}` runs past the end of the file"),
        });
    }
    Ok(())
}

/// Where a safetensors file's data starts (`8 + n`), from its first 8 bytes (the header
/// length `n`, little-endian) and the file's length. Refuses a header longer than
/// [`MAX_SAFETENSORS_HEADER_LEN`] or than the file.
pub fn safetensors_data_start(first: &[u8], file_len: u64) -> Result<u64, String> {
    let Some(&prefix) = first.first_chunk::<8>() else {
        return Err(format!(
            "the file is {file_len} bytes, too short for a safetensors header"
        ));
    };
    let n = u64::from_le_bytes(prefix);
    if n > MAX_SAFETENSORS_HEADER_LEN {
        return Err(format!(
            "header length {n} exceeds {MAX_SAFETENSORS_HEADER_LEN} bytes"
        ));
    }
    let data_start = 8 + n;
    if data_start > file_len {
        return Err(format!(
            "header length {n} runs past the end of the {file_len}-byte file"
        ));
    }
    Ok(data_start)
}

/// Parses and validates a safetensors header: `json` is the header (the file's bytes
/// `8..data_start`), and the tensors it describes must fill the rest of the `file_len`
/// bytes exactly. The safetensors crate checks each tensor's offsets against its shape and
/// dtype; the sums here are checked too, so offsets near 2^64 cannot wrap around to look
/// like a file that ends where it does.
pub fn safetensors_metadata(
    json: &[u8],
    data_start: u64,
    file_len: u64,
) -> Result<Metadata, String> {
    let metadata: Metadata =
        serde_json::from_slice(json).map_err(|e| format!("not a valid safetensors header: {e}"))?;
    let data_len = metadata.data_len() as u64;
    if data_start.checked_add(data_len) != Some(file_len) {
        return Err(format!(
            "the header describes {data_len} bytes of tensor data after {data_start} bytes of \
             header, but the file is {file_len} bytes"
        ));
    }
    Ok(metadata)
}

/// Where tensor `name` lies in safetensors file `file`, whose data starts at `data_start`
/// (after the header); `Ok(None)` when the header has no such tensor, `Err(dtype)` when
/// its dtype cannot hold weights. The mapped and the ranged readers both place tensors so.
pub fn safetensors_layout(
    metadata: &Metadata,
    data_start: u64,
    name: &str,
    file: &str,
) -> Result<Option<TensorLayout>, String> {
    let Some(info) = metadata.info(name) else {
        return Ok(None);
    };
    let element = ElementType::from_dtype(info.dtype).ok_or_else(|| format!("{:?}", info.dtype))?;
    let offset = data_start + info.data_offsets.0 as u64;
    Ok(Some(TensorLayout::contiguous(
        file,
        offset,
        element,
        &info.shape,
    )))
}

impl MappedFile {
    /// The layout of tensor `name`, which the checkpoint says is in this file.
    fn layout(&self, name: &str, dir: &Path) -> Result<TensorLayout, Error> {
        let missing = || Error::MissingTensor {
            dir: dir.to_path_buf(),
            tensor: name.to_string(),
        };
        match &self.contents {
            Contents::Safetensors {
                data_start,
                metadata,
            } => match safetensors_layout(metadata, *data_start, name, &self.name) {
                Ok(layout) => layout.ok_or_else(missing),
                Err(dtype) => Err(Error::UnsupportedDtype {
                    path: self.path.clone(),
                    tensor: name.to_string(),
                    dtype,
                }),
            },
            Contents::Torch(torch) => match torch.layout(&self.map, name, &self.name) {
                Ok(layout) => layout.ok_or_else(missing),
                Err(problem) => Err(Error::torch(&self.path, problem)),
            },
        }
    }

    /// Unmaps the pages of `[start, end)` from this process. The kernel maps whole
    /// neighbourhoods around each faulting page, so without this a sparse read of every
    /// block would leave most of a multi-gigabyte file counted in our resident set. The
    /// page cache keeps the data: a later read of the same rows refaults cheaply.
    fn release(&self, start: u64, end: u64) {
        #[cfg(unix)]
        {
            let start = (start / PAGE_SIZE * PAGE_SIZE) as usize;
            let end = (end as usize).min(self.map.len());
            // SAFETY: the map is a read-only shared file mapping, where MADV_DONTNEED only
            // drops page-table entries; contents re-read from the file are unchanged, and
            // no reference into the released range outlives `gather`'s copy-out.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                )
            };
        }
    }
}

/// Maps the weight file `name` of the checkpoint in `dir` and parses its index of tensors:
/// the safetensors header, or a PyTorch archive's directory and pickled state dict.
fn map_file(dir: &Path, name: &str, format: WeightFormat) -> Result<MappedFile, Error> {
    let path = dir.join(name);
    let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
    // SAFETY: the map is read-only; a checkpoint changed underneath a running analysis
    // would give wrong numbers, the same as any reader racing a writer.
    let map = unsafe { MmapOptions::new().map(&file) }.map_err(|e| Error::io(&path, e))?;
    // Rows are read sparsely: readahead would only pull in pages nobody needs.
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Random);
    let contents = match format {
        WeightFormat::PytorchBin => TorchFile::parse(&map)
            .map(Contents::Torch)
            .map_err(|problem| Error::torch(&path, problem))?,
        WeightFormat::Safetensors => {
            // Validates the header, every tensor's offsets, and the file length.
            let len = map.len() as u64;
            let metadata = safetensors_data_start(&map, len)
                .and_then(|start| {
                    let json = &map[8..start as usize];
                    Ok((start, safetensors_metadata(json, start, len)?))
                })
                .map_err(|message| Error::CorruptFile {
                    path: path.clone(),
                    message,
                })?;
            Contents::Safetensors {
                data_start: metadata.0,
                metadata: metadata.1,
            }
        }
    };
    Ok(MappedFile {
        name: name.to_string(),
        path,
        map,
        contents,
        touched_pages: Mutex::new(HashSet::new()),
    })
}

/// How a worker gets a checkpoint's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FetchMode {
    /// Download every file into the HF cache.
    Full,
    /// Download only the byte ranges the seeds read.
    Ranges,
    /// Ranges when they cover a small share of the files and the server honours them;
    /// otherwise, or when the files are already cached, full.
    #[default]
    Auto,
}

impl FetchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FetchMode::Full => "full",
            FetchMode::Ranges => "ranges",
            FetchMode::Auto => "auto",
        }
    }
}

impl fmt::Display for FetchMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FetchMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(FetchMode::Full),
            "ranges" => Ok(FetchMode::Ranges),
            "auto" => Ok(FetchMode::Auto),
            other => Err(format!(
                "unknown fetch mode {other:?}: expected full, ranges or auto"
            )),
        }
    }
}
