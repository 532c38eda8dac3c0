//! A checkpoint's layout for a ranged fetch: which weight file holds each block tensor (from
//! the shard index of the format the revision offers), the files' sizes, and where each
//! tensor's elements are, as a [`TensorLayout`]: from each safetensors file's header, read
//! with byte ranges (the 8-byte length, then the JSON; every file at once), or from each
//! `.bin` archive's records ([`super::torch`]).

use std::sync::Arc;

use neuromfa_common::checkpoint::{self, TensorLayout, WeightFiles, WeightFormat};
use neuromfa_common::{BlockTensor, ModelShape};
use safetensors::tensor::Metadata;

use super::plan::{Site, Sites};
use super::torch;
use super::Reads;
use crate::error::FetchError;
use crate::fetch::Session;
use crate::transport::RemoteFile;

/// The first read of a file: its header length and, usually, the whole header.
const HEADER_PROBE: u64 = 64 * 1024;

/// A checkpoint's weight files and where each block tensor lies in them.
pub(super) struct Layout {
    pub(super) files: Vec<Arc<RemoteFile>>,
    pub(super) sites: Sites,
}

/// A block tensor the analysis needs.
pub(super) struct Needed {
    pub(super) block: usize,
    pub(super) tensor: BlockTensor,
    pub(super) name: String,
    /// Index of its file.
    pub(super) file: usize,
    pub(super) expected: [usize; 2],
}

/// Which weight file holds each block tensor of `shape`: the shard index's answer, read into
/// the cache as full fetches do, or the single file.
pub(super) async fn tensor_files(
    session: &mut Session,
    shape: &ModelShape,
    weights: WeightFiles,
) -> Result<(Vec<String>, Vec<Needed>), FetchError> {
    let index = session.shard_index().await?;
    let mut files: Vec<String> = Vec::new();
    let mut needed = Vec::with_capacity(shape.num_blocks * BlockTensor::ALL.len());
    for block in 0..shape.num_blocks {
        for tensor in BlockTensor::ALL {
            let name = tensor.name(block);
            let file_name = match &index {
                None => weights.format.single_file(),
                Some(index) => index.shard_of(&name).ok_or_else(|| {
                    session.names().invalid(
                        weights.entry_file(),
                        format!("the weight_map has no tensor `{name}`"),
                    )
                })?,
            };
            let file = match files.iter().position(|f| f == file_name) {
                Some(i) => i,
                None => {
                    files.push(file_name.to_string());
                    files.len() - 1
                }
            };
            let expected = tensor.expected_shape(shape);
            needed.push(Needed {
                block,
                tensor,
                name,
                file,
                expected,
            });
        }
    }
    Ok((files, needed))
}

/// Every weight file's layout, read by ranges, with every block tensor checked (element
/// type and shape).
pub(super) async fn read_layout(
    reads: &Reads,
    format: WeightFormat,
    files: Vec<Arc<RemoteFile>>,
    needed: Vec<Needed>,
) -> Result<Layout, FetchError> {
    let layouts = match format {
        WeightFormat::Safetensors => safetensors_layouts(reads, &files, &needed).await?,
        WeightFormat::PytorchBin => torch::layouts(reads, &files, &needed).await?,
    };
    let mut sites = Sites {
        file_sizes: files.iter().map(|f| f.size).collect(),
        ..Sites::default()
    };
    for (needed, layout) in needed.into_iter().zip(layouts) {
        let site = Site {
            name: needed.name,
            file: needed.file,
            layout,
        };
        sites.by_tensor.insert((needed.block, needed.tensor), site);
    }
    Ok(Layout { files, sites })
}

/// Refuses a tensor whose shape is not the matrix the model's config makes it.
pub(super) fn check_shape(
    reads: &Reads,
    file: &RemoteFile,
    needed: &Needed,
    layout: &TensorLayout,
) -> Result<(), FetchError> {
    if layout.shape != needed.expected {
        return Err(reads.names().invalid(
            &file.name,
            format!(
                "tensor `{}` has shape {:?}, expected {:?}",
                needed.name, layout.shape, needed.expected
            ),
        ));
    }
    Ok(())
}

/// Says that a tensor is stored in an element type weights cannot have.
pub(super) fn unsupported_dtype(tensor: &str, dtype: &str) -> String {
    format!("tensor `{tensor}` has dtype {dtype}; supported are F32, F16 and BF16")
}

/// Reads every safetensors file's header, all at once, and places the needed tensors.
async fn safetensors_layouts(
    reads: &Reads,
    files: &[Arc<RemoteFile>],
    needed: &[Needed],
) -> Result<Vec<TensorLayout>, FetchError> {
    let headers = futures_util::future::join_all(files.iter().map(|f| read_header(reads, f)))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    needed
        .iter()
        .map(|needed| {
            let file = &files[needed.file];
            let (data_start, metadata) = &headers[needed.file];
            let layout = safetensors_layout(reads, file, &needed.name, *data_start, metadata)?;
            check_shape(reads, file, needed, &layout)?;
            Ok(layout)
        })
        .collect()
}

/// Where tensor `name` lies in `file`, whose data starts at `data_start`; checks its dtype.
fn safetensors_layout(
    reads: &Reads,
    file: &RemoteFile,
    name: &str,
    data_start: u64,
    metadata: &Metadata,
) -> Result<TensorLayout, FetchError> {
    let invalid = |detail: String| reads.names().invalid(&file.name, detail);
    match checkpoint::safetensors_layout(metadata, data_start, name, &file.name) {
        Ok(Some(layout)) => Ok(layout),
        Ok(None) => Err(invalid(format!("the header has no tensor `{name}`"))),
        Err(dtype) => Err(invalid(unsupported_dtype(name, &dtype))),
    }
}

/// Reads and validates one file's header: returns where its data starts and the metadata.
async fn read_header(reads: &Reads, file: &RemoteFile) -> Result<(u64, Metadata), FetchError> {
    let name = file.name.as_str();
    let invalid = |detail: String| reads.names().invalid(name, detail);
    let probe_end = file.size.min(HEADER_PROBE);
    let first = match file.size {
        // Too short to hold the header length: said so without a request.
        0..8 => Vec::new(),
        _ => reads.read(file, 0..probe_end).await?,
    };
    let data_start = checkpoint::safetensors_data_start(&first, file.size)
        .map_err(|e| invalid(format!("not a valid safetensors file: {e}")))?;
    let header = if data_start <= probe_end {
        first[8..data_start as usize].to_vec()
    } else {
        let rest = reads.read(file, probe_end..data_start).await?;
        let mut header = first[8..].to_vec();
        header.extend_from_slice(&rest);
        header
    };
    let metadata = checkpoint::safetensors_metadata(&header, data_start, file.size)
        .map_err(|e| invalid(format!("not a valid safetensors file: {e}")))?;
    Ok((data_start, metadata))
}
