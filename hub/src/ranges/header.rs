//! A checkpoint's layout for a ranged fetch: which weight file holds each block tensor (from
//! the shard index), the files' sizes, and where each tensor's data starts (from each file's
//! safetensors header, read with byte ranges: the 8-byte length, then the JSON).

use std::time::{Duration, Instant};

use neuromfa_common::checkpoint::{ElementType, INDEX_FILE, SINGLE_FILE};
use neuromfa_common::{BlockTensor, ModelShape};
use safetensors::tensor::Metadata;

use super::http::read_to_vec;
use super::plan::{Site, Sites};
use crate::error::FetchError;
use crate::fetch::{Cost, Remote, RemoteFile, Session};

/// The first read of a file: its header length and, usually, the whole header.
const HEADER_PROBE: u64 = 64 * 1024;
/// The largest header accepted (the safetensors crate's own limit).
const MAX_HEADER_LEN: u64 = 100_000_000;

/// A checkpoint's weight files and where each block tensor lies in them.
pub(super) struct Layout {
    pub(super) files: Vec<RemoteFile>,
    pub(super) sites: Sites,
    /// The quickest header read: what one small ranged request costs on this link.
    pub(super) request_time: Duration,
}

/// Which weight file holds each block tensor of `shape`: the shard index's answer, read into
/// the cache as full fetches do, or the single file. Lets go of the repository's cache lock
/// once read: nothing more is written to the cache.
async fn tensor_files(
    session: &mut Session,
    shape: &ModelShape,
) -> Result<(Vec<String>, Vec<(usize, BlockTensor, String, usize)>), FetchError> {
    let index = session.shard_index().await?;
    session.release_cache();
    let mut files: Vec<String> = Vec::new();
    // Per needed tensor: its block, kind, name and file (an index into `files`).
    let mut needed = Vec::with_capacity(shape.num_blocks * BlockTensor::ALL.len());
    for block in 0..shape.num_blocks {
        for tensor in BlockTensor::ALL {
            let name = tensor.name(block);
            let file_name = match &index {
                None => SINGLE_FILE,
                Some(index) => index.shard_of(&name).ok_or_else(|| {
                    session
                        .names()
                        .invalid(INDEX_FILE, format!("the weight_map has no tensor `{name}`"))
                })?,
            };
            let file = match files.iter().position(|f| f == file_name) {
                Some(i) => i,
                None => {
                    files.push(file_name.to_string());
                    files.len() - 1
                }
            };
            needed.push((block, tensor, name, file));
        }
    }
    Ok((files, needed))
}

/// Reads the shard index, then every weight file's size and header, and checks every block
/// tensor of `shape` (dtype and shape). `None` when `stop_if_cached` and the weight files are
/// already in the cache.
pub(super) async fn read_layout(
    session: &mut Session,
    shape: &ModelShape,
    stop_if_cached: bool,
) -> Result<Option<Layout>, FetchError> {
    let (names, needed) = tensor_files(session, shape).await?;
    if stop_if_cached && names.iter().all(|f| session.is_cached(f)) {
        return Ok(None);
    }
    let files = session.remote_files(names).await?;
    let remote = session.remote();
    let mut headers = Vec::with_capacity(files.len());
    let mut request_time = Duration::MAX;
    for file in &files {
        let started = Instant::now();
        let mut cost = Cost::default();
        let header = read_header(&remote, file, &mut cost).await;
        session.add_spent(cost);
        headers.push(header?);
        request_time = request_time.min(started.elapsed());
    }
    let mut sites = Sites {
        file_sizes: files.iter().map(|f| f.size).collect(),
        ..Sites::default()
    };
    for (block, tensor, name, file) in needed {
        let (data_start, metadata) = &headers[file];
        let expected = tensor.expected_shape(shape);
        let site = site(
            &remote,
            (file, &files[file]),
            name,
            expected,
            (*data_start, metadata),
        )?;
        sites.by_tensor.insert((block, tensor), site);
    }
    Ok(Some(Layout {
        files,
        sites,
        request_time,
    }))
}

/// Where tensor `name` lies in `file` (the `index`th weight file), whose data starts at
/// `data_start`; checks its dtype and that its shape is `expected`.
fn site(
    remote: &Remote,
    (index, file): (usize, &RemoteFile),
    name: String,
    expected: [usize; 2],
    (data_start, metadata): (u64, &Metadata),
) -> Result<Site, FetchError> {
    let invalid = |detail: String| remote.names().invalid(&file.name, detail);
    let info = metadata
        .info(&name)
        .ok_or_else(|| invalid(format!("the header has no tensor `{name}`")))?;
    let element = ElementType::from_dtype(info.dtype).ok_or_else(|| {
        invalid(format!(
            "tensor `{name}` has dtype {:?}; supported are F32, F16 and BF16",
            info.dtype
        ))
    })?;
    if info.shape != expected {
        return Err(invalid(format!(
            "tensor `{name}` has shape {:?}, expected {expected:?}",
            info.shape
        )));
    }
    Ok(Site {
        name,
        file: index,
        start: data_start + info.data_offsets.0 as u64,
        element,
        rows: expected[0],
        cols: expected[1],
    })
}

/// Reads and validates one file's header: returns where its data starts and the metadata.
async fn read_header(
    remote: &Remote,
    file: &RemoteFile,
    cost: &mut Cost,
) -> Result<(u64, Metadata), FetchError> {
    let name = file.name.as_str();
    let invalid = |detail: String| remote.names().invalid(name, detail);
    if file.size < 8 {
        return Err(invalid(format!(
            "the file is {} bytes, too short for a safetensors header",
            file.size
        )));
    }
    let probe_end = file.size.min(HEADER_PROBE);
    let first = read_to_vec(remote, file, 0..probe_end, cost).await?;
    let n = u64::from_le_bytes([
        first[0], first[1], first[2], first[3], first[4], first[5], first[6], first[7],
    ]);
    if n > MAX_HEADER_LEN {
        return Err(invalid(format!(
            "not a valid safetensors file: header length {n} exceeds {MAX_HEADER_LEN} bytes"
        )));
    }
    let data_start = 8 + n;
    if data_start > file.size {
        return Err(invalid(format!(
            "not a valid safetensors file: header length {n} runs past the end of the {}-byte file",
            file.size
        )));
    }
    let header = if data_start <= probe_end {
        first[8..data_start as usize].to_vec()
    } else {
        let rest = read_to_vec(remote, file, probe_end..data_start, cost).await?;
        let mut header = first[8..].to_vec();
        header.extend_from_slice(&rest);
        header
    };
    // Validates dtypes, shapes against offsets, and that the offsets are contiguous.
    let metadata: Metadata = serde_json::from_slice(&header)
        .map_err(|e| invalid(format!("not a valid safetensors header: {e}")))?;
    let expected = data_start + metadata.data_len() as u64;
    if expected != file.size {
        return Err(invalid(format!(
            "not a valid safetensors file: the header describes {} bytes of tensor data after \
             {data_start} bytes of header, but the file is {} bytes",
            metadata.data_len(),
            file.size
        )));
    }
    Ok((data_start, metadata))
}
