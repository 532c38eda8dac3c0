//! Reading the weights a sample needs from a safetensors checkpoint on local disk.
//!
//! Files are memory-mapped and only the elements of drawn rows and columns are ever
//! touched, so a 10-seed analysis of a multi-gigabyte checkpoint reads a few percent of
//! it. Single files and sharded checkpoints (`model.safetensors.index.json`) both work.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use memmap2::{Mmap, MmapOptions};
use safetensors::tensor::{Dtype, Metadata, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::layout::{BlockTensor, ModelShape};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const CONFIG_FILE: &str = "config.json";
const PAGE_SIZE: u64 = 4096;

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

/// Where one weight matrix lives.
#[derive(Debug, Clone)]
struct TensorLocation {
    name: String,
    file: usize,
    /// Absolute byte offset of element `[0, 0]` in the file.
    start: u64,
    element: ElementType,
    cols: usize,
}

struct MappedFile {
    path: PathBuf,
    map: Mmap,
    header_len: usize,
    metadata: Metadata,
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
    /// Opens the checkpoint in `dir`: `config.json` plus `model.safetensors` or a sharded
    /// set described by `model.safetensors.index.json`. Checks that every tensor the
    /// network needs is present with the right shape and a supported dtype.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let shape = ModelShape::from_config_file(&dir.join(CONFIG_FILE))?;
        let needed: Vec<(usize, BlockTensor)> = (0..shape.num_blocks)
            .flat_map(|b| BlockTensor::ALL.into_iter().map(move |t| (b, t)))
            .collect();

        // Which file holds each needed tensor.
        let index_path = dir.join(INDEX_FILE);
        let file_of: HashMap<String, String> = if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let index: ShardIndex = serde_json::from_str(&text).map_err(|e| Error::Config {
                path: index_path.clone(),
                message: format!("not a valid safetensors index: {e}"),
            })?;
            index.weight_map.into_iter().collect()
        } else {
            let single = dir.join(SINGLE_FILE);
            if !single.exists() {
                return Err(Error::Config {
                    path: dir.to_path_buf(),
                    message: format!("no {SINGLE_FILE} and no {INDEX_FILE} in this directory"),
                });
            }
            needed
                .iter()
                .map(|&(b, t)| (t.name(b), SINGLE_FILE.to_string()))
                .collect()
        };

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
                    files.push(map_file(&dir.join(file_name))?);
                    file_ids.insert(file_name.clone(), files.len() - 1);
                    files.len() - 1
                }
            };
            let location = locate(
                &files[file],
                file,
                &name,
                tensor.expected_shape(&shape),
                dir,
            )?;
            tensors.insert((block, tensor), location);
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

    /// Total size of the mapped safetensors files in bytes.
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
        let file = &self.files[location.file];
        let element_size = location.element.size();
        let mut values = Vec::with_capacity(rows.len() * cols.len());
        let mut pages = Vec::with_capacity(rows.len());
        let (mut lowest, mut highest) = (u64::MAX, 0u64);
        for &row in rows {
            let row_start = location.start + (row * location.cols * element_size) as u64;
            for &col in cols {
                let offset = row_start + (col * element_size) as u64;
                // In bounds: rows and cols were drawn below the validated shape.
                let at = offset as usize;
                let value = location.element.decode(&file.map[at..at + element_size]);
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

impl MappedFile {
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

fn map_file(path: &Path) -> Result<MappedFile, Error> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only; a checkpoint changed underneath a running analysis
    // would give wrong numbers, the same as any reader racing a writer.
    let map = unsafe { MmapOptions::new().map(&file) }.map_err(|e| Error::io(path, e))?;
    // Rows are read sparsely: readahead would only pull in pages nobody needs.
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Random);
    // Parsing validates the header, every tensor's offsets, and the file length.
    let (header_len, metadata) =
        SafeTensors::read_metadata(&map).map_err(|e| Error::CorruptFile {
            path: path.to_path_buf(),
            message: format!("{e:?}"),
        })?;
    Ok(MappedFile {
        path: path.to_path_buf(),
        map,
        header_len,
        metadata,
        touched_pages: Mutex::new(HashSet::new()),
    })
}

fn locate(
    mapped: &MappedFile,
    file: usize,
    name: &str,
    expected: [usize; 2],
    dir: &Path,
) -> Result<TensorLocation, Error> {
    let info = mapped
        .metadata
        .info(name)
        .ok_or_else(|| Error::MissingTensor {
            dir: dir.to_path_buf(),
            tensor: name.to_string(),
        })?;
    let element = ElementType::from_dtype(info.dtype).ok_or_else(|| Error::UnsupportedDtype {
        path: mapped.path.clone(),
        tensor: name.to_string(),
        dtype: format!("{:?}", info.dtype),
    })?;
    if info.shape != expected {
        return Err(Error::WrongShape {
            path: mapped.path.clone(),
            tensor: name.to_string(),
            found: info.shape.clone(),
            expected: expected.to_vec(),
        });
    }
    Ok(TensorLocation {
        name: name.to_string(),
        file,
        start: (8 + mapped.header_len + info.data_offsets.0) as u64,
        element,
        cols: expected[1],
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
