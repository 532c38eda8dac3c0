//! PyTorch `.bin` checkpoints: the zip archives `torch.save` writes (torch 1.6 and later),
//! read in stages over byte slices so that a memory-mapped file and ranged downloads use
//! the same parsers.
//!
//! An archive holds, under one folder (`archive/`, or the file's stem), `data.pkl` (the
//! pickled state dict), `byteorder`, `version` and one entry `data/<key>` per storage, each
//! stored uncompressed with its data aligned to 64 bytes. A tensor is a view of a storage:
//! an element offset, a shape and strides. Several tensors may share one storage.
//!
//! # The stages, and how a ranged reader drives them
//!
//! 1. **Directory.** Fetch the file's last [`zip::TAIL_GUESS`] bytes (one suffix range)
//!    and call [`zip::parse_tail`]`(bytes, start, file_len)`. On
//!    [`zip::Tail::NeedFrom`]`(offset)` fetch from `offset` to the end and call again.
//! 2. **Archive.** [`Archive::new`] finds the records' folder and `data.pkl` in the
//!    directory.
//! 3. **Tensors.** Fetch [`Archive::pickle_span`] (header and data of `data.pkl`, one
//!    range), get its bytes with [`Archive::pickle`] and parse them with
//!    [`pickle::parse_state_dict`]. [`Archive::byteorder_span`] and
//!    [`check_byteorder`] do the same for the byte-order record, which torch writes right
//!    after `data.pkl` (a ranged reader may fetch both in one range).
//! 4. **Storages.** For each tensor needed, [`Archive::storage_entry`] names its entry;
//!    fetch [`zip::Entry::header_span`] (a small range; requests for all tensors can go
//!    out at once) and call [`zip::CentralDirectory::data_start`], which may ask for
//!    more bytes ([`zip::DataStart::NeedBytes`]).
//! 5. **Layout.** [`tensor_element`] refuses a tensor whose storage type weights cannot have
//!    (best before step 4), [`tensor_layout`] checks the tensor against its storage and gives its
//!    [`TensorLayout`]; [`TensorLayout::element_offset`] then places every element, and
//!    only the planned rows and columns need fetching, as for safetensors.
//!
//! [`TorchFile`] runs stages 1–4 over a whole file in memory (a memory map).

pub mod pickle;
pub mod zip;

use std::collections::HashMap;
use std::ops::Range;

use crate::checkpoint::{ElementType, TensorLayout};
use crate::error::TorchError;
use pickle::PickledTensor;
use zip::{CentralDirectory, DataStart, Entry, EntryData, Tail};

/// The pickled state dict's record.
pub const PICKLE_RECORD: &str = "data.pkl";
/// The byte-order record; files older torch wrote lack it and are read as little-endian.
pub const BYTEORDER_RECORD: &str = "byteorder";

/// The element type of a storage class, if weights may be stored in it.
fn element_type(storage_type: &str) -> Option<ElementType> {
    match storage_type {
        "HalfStorage" => Some(ElementType::F16),
        "BFloat16Storage" => Some(ElementType::BF16),
        "FloatStorage" => Some(ElementType::F32),
        _ => None,
    }
}

/// The records of one `torch.save` archive.
#[derive(Debug, Clone)]
pub struct Archive {
    pub directory: CentralDirectory,
    /// The folder every record is in.
    pub prefix: String,
}

impl Archive {
    /// Finds the folder the records are in from the entry `<folder>/data.pkl`.
    pub fn new(directory: CentralDirectory) -> Result<Self, TorchError> {
        let prefix = directory
            .entries
            .iter()
            .find_map(|e| {
                let folder = e.name.strip_suffix(PICKLE_RECORD)?.strip_suffix('/')?;
                (!folder.contains('/')).then(|| folder.to_string())
            })
            .ok_or(TorchError::NoPickle)?;
        Ok(Archive { directory, prefix })
    }

    /// The entry of record `name` (a path inside the folder).
    pub fn record(&self, name: &str) -> Option<&Entry> {
        self.directory.entry(&format!("{}/{name}", self.prefix))
    }

    /// The entry of `data.pkl`.
    pub fn pickle_entry(&self) -> Result<&Entry, TorchError> {
        self.record(PICKLE_RECORD).ok_or(TorchError::NoPickle)
    }

    /// The bytes holding `data.pkl`'s local header and data.
    pub fn pickle_span(&self) -> Result<Range<u64>, TorchError> {
        Ok(self.pickle_entry()?.span())
    }

    /// `data.pkl` from `bytes`, the file from its local header on.
    pub fn pickle<'a>(&self, bytes: &'a [u8]) -> Result<EntryData<'a>, TorchError> {
        self.directory.entry_data(self.pickle_entry()?, bytes)
    }

    /// The bytes holding the byte-order record, if the archive has one.
    pub fn byteorder_span(&self) -> Option<Range<u64>> {
        self.record(BYTEORDER_RECORD).map(Entry::span)
    }

    /// The entry holding `tensor`'s storage.
    pub fn storage_entry(&self, tensor: &PickledTensor) -> Result<&Entry, TorchError> {
        let name = format!("data/{}", tensor.storage.key);
        self.record(&name)
            .ok_or_else(|| TorchError::MissingStorage {
                tensor: tensor.name.clone(),
                entry: format!("{}/{name}", self.prefix),
            })
    }
}

/// Refuses a byte-order record other than `little`.
pub fn check_byteorder(record: &[u8]) -> Result<(), TorchError> {
    match record {
        b"little" => Ok(()),
        other => Err(TorchError::ByteOrder(
            String::from_utf8_lossy(other).into_owned(),
        )),
    }
}

/// The element type of `tensor`'s storage, or the error naming it when weights cannot be
/// stored in that type (a mask's `BoolStorage`, say).
pub fn tensor_element(tensor: &PickledTensor) -> Result<ElementType, TorchError> {
    let storage_type = &tensor.storage.storage_type;
    element_type(storage_type).ok_or_else(|| TorchError::UnsupportedStorage {
        tensor: tensor.name.clone(),
        storage: storage_type.clone(),
    })
}

/// Where `tensor`'s elements are, given its storage's entry and the absolute offset its
/// data starts at (from [`zip::CentralDirectory::data_start`]); `file` names the file for
/// the layout. Refuses storages of element types weights cannot have, and views that
/// reach past their storage or the storage past its entry.
pub fn tensor_layout(
    tensor: &PickledTensor,
    storage: &Entry,
    data_start: u64,
    file: &str,
) -> Result<TensorLayout, TorchError> {
    let element = tensor_element(tensor)?;
    let size = element.size() as u128;
    let outside = |needed: Option<u128>| TorchError::OutsideStorage {
        tensor: tensor.name.clone(),
        entry: storage.name.clone(),
        needed: needed.unwrap_or(u128::MAX),
        available: storage.size,
    };
    let storage_bytes = u128::from(tensor.storage.numel) * size;
    if storage_bytes > u128::from(storage.size) {
        return Err(outside(Some(storage_bytes)));
    }
    // One past the last byte the view reads: its last element's index, plus one, in bytes.
    let needed = if tensor.shape.contains(&0) {
        Some(0)
    } else {
        tensor
            .shape
            .iter()
            .zip(&tensor.strides)
            .try_fold(u128::from(tensor.storage_offset), |last, (&n, &stride)| {
                last.checked_add(u128::from(n - 1).checked_mul(u128::from(stride))?)
            })
            .and_then(|last| last.checked_add(1)?.checked_mul(size))
    };
    if needed.is_none_or(|needed| needed > storage_bytes) {
        return Err(outside(needed));
    }
    let counts = |values: &[u64]| -> Option<Vec<usize>> {
        values.iter().map(|&v| usize::try_from(v).ok()).collect()
    };
    // Within the storage, so within the entry: neither the offset nor the counts overflow.
    let offset = u64::try_from(u128::from(data_start) + u128::from(tensor.storage_offset) * size);
    match (counts(&tensor.shape), counts(&tensor.strides), offset) {
        (Some(shape), Some(strides), Ok(offset)) => Ok(TensorLayout {
            file: file.to_string(),
            offset,
            element,
            shape,
            strides,
        }),
        _ => Err(outside(needed)),
    }
}

/// A `torch.save` archive held whole in memory: its directory and pickled tensors.
#[derive(Debug, Clone)]
pub struct TorchFile {
    archive: Archive,
    tensors: HashMap<String, PickledTensor>,
}

impl TorchFile {
    /// Parses the directory, the byte order and `data.pkl` of the archive `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, TorchError> {
        let directory = match zip::parse_tail(bytes, 0, bytes.len() as u64)? {
            Tail::Directory(directory) => directory,
            Tail::NeedFrom(offset) => {
                return Err(TorchError::Truncated(format!(
                    "the end records point before the file's start ({offset})"
                )))
            }
        };
        let archive = Archive::new(directory)?;
        if let Some(entry) = archive.record(BYTEORDER_RECORD) {
            check_byteorder(whole_entry(&archive, entry, bytes)?)?;
        }
        let pickle = whole_entry(&archive, archive.pickle_entry()?, bytes)?;
        let tensors = pickle::parse_state_dict(pickle)?
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        Ok(TorchFile { archive, tensors })
    }

    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    /// The layout of tensor `name` in the archive `bytes` (the bytes given to
    /// [`Self::parse`]), named `file`; `None` when the state dict has no such tensor.
    pub fn layout(
        &self,
        bytes: &[u8],
        name: &str,
        file: &str,
    ) -> Result<Option<TensorLayout>, TorchError> {
        let Some(tensor) = self.tensors.get(name) else {
            return Ok(None);
        };
        // The type first: a mask's storage is refused as such before it is looked for.
        tensor_element(tensor)?;
        let entry = self.archive.storage_entry(tensor)?;
        let header = from_header(entry, bytes);
        let data_start = match self.archive.directory.data_start(entry, header)? {
            DataStart::At(start) => start,
            DataStart::NeedBytes(_) => return Err(truncated_entry(entry)),
        };
        tensor_layout(tensor, entry, data_start, file).map(Some)
    }
}

/// The file from `entry`'s local header on (empty if the header lies past the end).
fn from_header<'a>(entry: &Entry, bytes: &'a [u8]) -> &'a [u8] {
    usize::try_from(entry.local_header_offset)
        .ok()
        .and_then(|at| bytes.get(at..))
        .unwrap_or(&[])
}

fn whole_entry<'a>(
    archive: &Archive,
    entry: &Entry,
    bytes: &'a [u8],
) -> Result<&'a [u8], TorchError> {
    match archive
        .directory
        .entry_data(entry, from_header(entry, bytes))?
    {
        EntryData::Bytes(data) => Ok(data),
        EntryData::NeedBytes(_) => Err(truncated_entry(entry)),
    }
}

fn truncated_entry(entry: &Entry) -> TorchError {
    TorchError::Truncated(format!(
        "entry `{}` runs past the end of the file",
        entry.name
    ))
}
