//! A `.bin` checkpoint's layout for a ranged fetch: the stages of
//! [`neuromfa_common::torch`] driven by byte ranges, every file at once. Per file:
//!
//! 1. the zip's tail, one suffix range of [`zip::TAIL_GUESS`] bytes (more only when the
//!    central directory is larger);
//! 2. `data.pkl` and the byte-order record torch writes right after it, one range;
//! 3. the local header of each needed storage, small ranges all in flight at once (one per
//!    needed tensor, 4 per block; storages shared by several tensors read once).
//!
//! The tensors come out as the same [`TensorLayout`]s the memory-mapped file gives, and a
//! bad archive gives the same reason, for the same tensor: tensors are checked in the order
//! [`neuromfa_common::Checkpoint::open`] checks them, and the first failure is the answer.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use futures_util::StreamExt as _;
use neuromfa_common::checkpoint::TensorLayout;
use neuromfa_common::error::TorchError;
use neuromfa_common::torch::pickle::{parse_state_dict, PickledTensor};
use neuromfa_common::torch::zip::{self, CentralDirectory, DataStart, Entry, EntryData, Tail};
use neuromfa_common::torch::{
    check_byteorder, tensor_element, tensor_layout, Archive, BYTEORDER_RECORD,
};

use super::header::{check_shape, unsupported_dtype, Needed};
use super::link::MIN_CONCURRENCY;
use super::Reads;
use crate::error::FetchError;
use crate::transport::RemoteFile;

/// The largest central directory or record read whole: a checkpoint's directory is tens of
/// kilobytes and its `data.pkl` about as large; more is a corrupt record.
const MAX_RECORD: u64 = 64 << 20;
/// How far after `data.pkl` the byte-order record may start and still share its request.
const BYTEORDER_REACH: u64 = 4096;

/// Why a file failed, and the index (among the needed tensors) of the tensor it stopped
/// at: of several failures, the first in that order is the one reported.
type Stopped = (usize, FetchError);

/// Every needed tensor's layout, read from the `.bin` `files` by ranges.
pub(super) async fn layouts(
    reads: &Reads,
    files: &[Arc<RemoteFile>],
    needed: &[Needed],
) -> Result<Vec<TensorLayout>, FetchError> {
    // Futures collected before they run: a closure making them, kept in the combinator's
    // type, would make the worker's future not `Send` (rust-lang/rust#102211).
    let file_reads: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(index, file)| read_file(reads, file, needed, index))
        .collect();
    let mut placed: Vec<Option<TensorLayout>> = vec![None; needed.len()];
    let mut first_stop: Option<Stopped> = None;
    for read in futures_util::future::join_all(file_reads).await {
        match read {
            Ok(layouts) => {
                for (i, layout) in layouts {
                    placed[i] = Some(layout);
                }
            }
            Err(stop) if first_stop.as_ref().is_none_or(|first| stop.0 < first.0) => {
                first_stop = Some(stop)
            }
            Err(_) => {}
        }
    }
    if let Some((_, e)) = first_stop {
        return Err(e);
    }
    placed
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            reads.names().invalid(
                files.first().map_or("", |f| f.name.as_str()),
                "a needed tensor was not placed".to_string(),
            )
        })
}

/// The layouts of the `index`th file's needed tensors (by index among all needed tensors).
async fn read_file(
    reads: &Reads,
    file: &RemoteFile,
    needed: &[Needed],
    index: usize,
) -> Result<Vec<(usize, TensorLayout)>, Stopped> {
    let mine: Vec<(usize, &Needed)> = needed
        .iter()
        .enumerate()
        .filter(|(_, n)| n.file == index)
        .collect();
    let first = mine.first().map_or(0, |(i, _)| *i);
    let archive = read_archive(reads, file).await.map_err(|e| (first, e))?;
    let pickled = read_state_dict(reads, file, &archive)
        .await
        .map_err(|e| (first, e))?;
    let pickled: HashMap<&str, &PickledTensor> =
        pickled.iter().map(|t| (t.name.as_str(), t)).collect();

    // What needs no more bytes, in order, up to the first tensor that fails.
    let mut found: Vec<(usize, &Needed, &PickledTensor, &Entry)> = Vec::new();
    let mut stopped: Option<Stopped> = None;
    for &(i, needed) in &mine {
        match storage_of(reads, file, &archive, &pickled, needed) {
            Ok((tensor, entry)) => found.push((i, needed, tensor, entry)),
            Err(e) => {
                stopped = Some((i, e));
                break;
            }
        }
    }
    let mut data_starts = read_data_starts(reads, file, &archive.directory, &found).await;
    let mut layouts = Vec::with_capacity(found.len());
    for (i, needed, tensor, entry) in found {
        // A storage that failed fails its first tensor, which ends the file's reading.
        let start = match data_starts.remove(entry.name.as_str()) {
            Some(Ok(start)) => {
                data_starts.insert(entry.name.clone(), Ok(start));
                Ok(start)
            }
            Some(Err(e)) => Err(e),
            None => Err(reads
                .names()
                .invalid(&file.name, format!("storage `{}` was not read", entry.name))),
        };
        let placed = start.and_then(|start| {
            let layout = tensor_layout(tensor, entry, start, &file.name)
                .map_err(|problem| invalid(reads, file, problem))?;
            check_shape(reads, file, needed, &layout)?;
            Ok(layout)
        });
        layouts.push((i, placed.map_err(|e| (i, e))?));
    }
    match stopped {
        Some(stop) => Err(stop),
        None => Ok(layouts),
    }
}

/// The pickled tensor `needed` names and its storage's entry; refuses a missing tensor, a
/// storage type weights cannot have (before looking for the storage, as the mapped reader
/// does), and a missing storage.
fn storage_of<'a>(
    reads: &Reads,
    file: &RemoteFile,
    archive: &'a Archive,
    pickled: &HashMap<&str, &'a PickledTensor>,
    needed: &Needed,
) -> Result<(&'a PickledTensor, &'a Entry), FetchError> {
    let tensor = *pickled.get(needed.name.as_str()).ok_or_else(|| {
        reads.names().invalid(
            &file.name,
            format!("the state dict has no tensor `{}`", needed.name),
        )
    })?;
    tensor_element(tensor).map_err(|problem| invalid(reads, file, problem))?;
    let entry = archive
        .storage_entry(tensor)
        .map_err(|problem| invalid(reads, file, problem))?;
    Ok((tensor, entry))
}

/// Where each storage's data starts, by entry name: one small read per distinct entry, all
/// in flight at once.
async fn read_data_starts(
    reads: &Reads,
    file: &RemoteFile,
    directory: &CentralDirectory,
    found: &[(usize, &Needed, &PickledTensor, &Entry)],
) -> HashMap<String, Result<u64, FetchError>> {
    let mut entries: Vec<&Entry> = found.iter().map(|f| f.3).collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries.dedup_by(|a, b| a.name == b.name);
    let starts: Vec<_> = entries
        .into_iter()
        .map(|entry| async move {
            let start = data_start(reads, file, directory, entry).await;
            (entry.name.clone(), start)
        })
        .collect();
    futures_util::stream::iter(starts)
        .buffer_unordered(MIN_CONCURRENCY)
        .collect()
        .await
}

/// Where `entry`'s data starts, from its local header (a longer header than torch writes
/// costs a second read).
async fn data_start(
    reads: &Reads,
    file: &RemoteFile,
    directory: &CentralDirectory,
    entry: &Entry,
) -> Result<u64, FetchError> {
    let mut header = read_clamped(reads, file, entry.header_span()).await?;
    loop {
        match directory.data_start(entry, &header) {
            Ok(DataStart::At(start)) => return Ok(start),
            Ok(DataStart::NeedBytes(n)) if n > header.len() as u64 => {
                let more = read_more(reads, file, entry, n, header.len()).await?;
                header = more;
            }
            Ok(DataStart::NeedBytes(_)) => return Err(truncated(reads, file, entry)),
            Err(problem) => return Err(invalid(reads, file, problem)),
        }
    }
}

/// The archive's records: the central directory from the file's tail, one suffix range
/// (and, when the directory begins before it, one more range for the rest).
async fn read_archive(reads: &Reads, file: &RemoteFile) -> Result<Archive, FetchError> {
    let mut start = file.size.saturating_sub(zip::TAIL_GUESS);
    let mut bytes = read_clamped(reads, file, start..file.size).await?;
    loop {
        match zip::parse_tail(&bytes, start, file.size) {
            Ok(Tail::Directory(directory)) => {
                return Archive::new(directory).map_err(|problem| invalid(reads, file, problem))
            }
            Ok(Tail::NeedFrom(offset)) if offset < start && file.size - offset <= MAX_RECORD => {
                let mut earlier = read_clamped(reads, file, offset..start).await?;
                earlier.extend_from_slice(&bytes);
                (bytes, start) = (earlier, offset);
            }
            Ok(Tail::NeedFrom(offset)) => {
                return Err(reads.names().invalid(
                    &file.name,
                    format!(
                        "the zip's central directory would start at {offset}: more than \
                         {MAX_RECORD} bytes from the end of the {}-byte file",
                        file.size
                    ),
                ))
            }
            Err(problem) => return Err(invalid(reads, file, problem)),
        }
    }
}

/// The pickled tensors of `data.pkl`, after the byte-order record is checked: one range
/// holds both when torch wrote the record right after `data.pkl`.
async fn read_state_dict(
    reads: &Reads,
    file: &RemoteFile,
    archive: &Archive,
) -> Result<Vec<PickledTensor>, FetchError> {
    let pickle_entry = archive
        .pickle_entry()
        .map_err(|problem| invalid(reads, file, problem))?;
    let pickle = pickle_entry.span();
    let byteorder = archive.byteorder_span();
    // The spans reach past their records (they allow for the longest local header torch
    // writes), so they may overlap: only the distance between them matters.
    let shared = byteorder.as_ref().filter(|b| {
        b.start >= pickle.start && b.start.saturating_sub(pickle.end) <= BYTEORDER_REACH
    });
    let span = pickle.start..shared.map_or(pickle.end, |b| b.end.max(pickle.end));
    if span.end - span.start > MAX_RECORD {
        return Err(reads.names().invalid(
            &file.name,
            format!(
                "data.pkl would be {} bytes; refusing more than {MAX_RECORD}",
                span.end - span.start
            ),
        ));
    }
    let bytes = read_clamped(reads, file, span.clone()).await?;
    if let (Some(order), Some(entry)) = (&byteorder, archive.record(BYTEORDER_RECORD)) {
        let own;
        let from_order = match shared {
            Some(_) => bytes
                .get((order.start - span.start) as usize..)
                .unwrap_or(&[]),
            None => {
                own = read_clamped(reads, file, order.clone()).await?;
                &own[..]
            }
        };
        let record = record_bytes(reads, file, &archive.directory, entry, from_order).await?;
        check_byteorder(&record).map_err(|problem| invalid(reads, file, problem))?;
    }
    let pkl = record_bytes(reads, file, &archive.directory, pickle_entry, &bytes).await?;
    parse_state_dict(&pkl).map_err(|problem| invalid(reads, file, problem))
}

/// A record's data from `bytes`, the file from its local header on; one more read when its
/// local header is longer than torch writes.
async fn record_bytes(
    reads: &Reads,
    file: &RemoteFile,
    directory: &CentralDirectory,
    entry: &Entry,
    bytes: &[u8],
) -> Result<Vec<u8>, FetchError> {
    let need = match directory.entry_data(entry, bytes) {
        Ok(EntryData::Bytes(data)) => return Ok(data.to_vec()),
        Ok(EntryData::NeedBytes(n)) => n,
        Err(problem) => return Err(invalid(reads, file, problem)),
    };
    let more = read_more(reads, file, entry, need, bytes.len()).await?;
    match directory.entry_data(entry, &more) {
        Ok(EntryData::Bytes(data)) => Ok(data.to_vec()),
        Ok(EntryData::NeedBytes(_)) => Err(truncated(reads, file, entry)),
        Err(problem) => Err(invalid(reads, file, problem)),
    }
}

/// `n` bytes from `entry`'s local header, when fewer (`had`) were read: one more range, or
/// an error when the file ends first.
async fn read_more(
    reads: &Reads,
    file: &RemoteFile,
    entry: &Entry,
    n: u64,
    had: usize,
) -> Result<Vec<u8>, FetchError> {
    let start = entry.local_header_offset;
    let end = start.saturating_add(n);
    if n <= had as u64 || end > file.size || n > MAX_RECORD {
        return Err(truncated(reads, file, entry));
    }
    reads.read(file, start..end).await
}

/// `range` of `file`, cut at the file's end (empty when it starts there or later).
async fn read_clamped(
    reads: &Reads,
    file: &RemoteFile,
    range: Range<u64>,
) -> Result<Vec<u8>, FetchError> {
    let end = range.end.min(file.size);
    if range.start >= end {
        return Ok(Vec::new());
    }
    reads.read(file, range.start..end).await
}

/// A bad archive, with the reason the mapped reader gives for it.
fn invalid(reads: &Reads, file: &RemoteFile, problem: TorchError) -> FetchError {
    let detail = match problem {
        TorchError::UnsupportedStorage { tensor, storage } => unsupported_dtype(&tensor, &storage),
        problem => format!("cannot read as a PyTorch zip checkpoint: {problem}"),
    };
    reads.names().invalid(&file.name, detail)
}

fn truncated(reads: &Reads, file: &RemoteFile, entry: &Entry) -> FetchError {
    invalid(
        reads,
        file,
        TorchError::Truncated(format!(
            "entry `{}` runs past the end of the file",
            entry.name
        )),
    )
}
