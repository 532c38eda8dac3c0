//! A virtual `.safetensors` file: the header the safetensors crate writes (tensors sorted
//! by name, `{"format": "pt"}` metadata, padded with spaces to 8 bytes), then the data.

use std::collections::HashMap;

use anyhow::Context as _;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype as StDtype;

use super::file::{Dtype, Layout, Piece, TensorData};

pub(crate) fn layout(tensors: &[TensorData]) -> anyhow::Result<Layout> {
    let mut sorted: Vec<&TensorData> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut infos = Vec::with_capacity(sorted.len());
    let mut offset = 0usize;
    for t in &sorted {
        let dtype = match t.dtype {
            Dtype::F16 => StDtype::F16,
            Dtype::F32 => StDtype::F32,
            Dtype::Bool => StDtype::BOOL,
        };
        let len = t.byte_len() as usize;
        infos.push((
            t.name.clone(),
            TensorInfo {
                dtype,
                shape: t.shape.iter().map(|&d| d as usize).collect(),
                data_offsets: (offset, offset + len),
            },
        ));
        offset += len;
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let metadata = Metadata::new(Some(metadata), infos).context("a safetensors header")?;
    let mut header = serde_json::to_string(&metadata)?.into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut layout = Layout::default();
    layout.push_bytes((header.len() as u64).to_le_bytes().to_vec());
    layout.push_bytes(header);
    for t in sorted {
        layout.push(Piece::Data(t.data.clone()), t.byte_len(), None);
    }
    Ok(layout)
}
