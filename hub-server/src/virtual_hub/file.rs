//! A virtual file: a list of pieces laid end to end — bytes held in memory (headers,
//! pickles, small tensors), generated tensor data, and the parts of a zip archive that
//! hold CRCs of generated data — read at any offset, and its facts (sha256, CRCs)
//! computed by one pass over all of it.

use std::sync::{Arc, OnceLock};

use neuromfa_hub::hashing::hex;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::facts::{Facts, FactsStore};
use super::values::{NormalTensor, StepTable};

/// What a tensor's bytes are.
#[derive(Clone)]
pub(crate) enum Data {
    /// Little-endian f16 weights, generated.
    Normal {
        tensor: NormalTensor,
        table: Arc<StepTable>,
    },
    /// Bytes held in memory (small f32 buffers).
    Bytes(Arc<[u8]>),
    /// One little-endian f16 value repeated (layer norms and biases).
    Constant([u8; 2]),
    /// A causal attention mask: an `n × n` lower-triangular matrix of booleans.
    Mask { n: u64 },
}

/// A tensor of a virtual checkpoint.
#[derive(Clone)]
pub(crate) struct TensorData {
    pub(crate) name: String,
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<u64>,
    pub(crate) data: Data,
}

/// Element types a virtual checkpoint holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dtype {
    F16,
    F32,
    Bool,
}

impl Dtype {
    pub(crate) fn size(self) -> u64 {
        match self {
            Dtype::F16 => 2,
            Dtype::F32 => 4,
            Dtype::Bool => 1,
        }
    }
}

impl TensorData {
    pub(crate) fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    pub(crate) fn byte_len(&self) -> u64 {
        self.numel() * self.dtype.size()
    }
}

/// One stretch of a file.
#[derive(Clone)]
pub(crate) enum Piece {
    Bytes(Arc<[u8]>),
    /// Tensor data from its first byte.
    Data(Data),
    /// The CRC-32 of storage record `k` (little-endian), known once the facts are.
    Crc(usize),
    /// The zip archive's central directory and end records, built from the CRCs.
    Tail,
}

#[derive(Clone)]
pub(crate) struct Segment {
    pub(crate) start: u64,
    pub(crate) len: u64,
    pub(crate) piece: Piece,
    /// The storage record whose data this is, for its CRC.
    pub(crate) storage: Option<usize>,
}

/// Builds the central directory and end records from the storages' CRCs.
pub(crate) type TailBuilder = Box<dyn Fn(&[u32]) -> Vec<u8> + Send + Sync>;

/// The pieces of a file, in order.
#[derive(Default)]
pub(crate) struct Layout {
    pub(crate) segments: Vec<Segment>,
    pub(crate) storages: usize,
    tail: Option<TailBuilder>,
}

impl Layout {
    pub(crate) fn size(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.start + s.len)
    }

    pub(crate) fn push(&mut self, piece: Piece, len: u64, storage: Option<usize>) {
        if len == 0 {
            return;
        }
        let start = self.size();
        self.segments.push(Segment {
            start,
            len,
            piece,
            storage,
        });
    }

    pub(crate) fn push_bytes(&mut self, bytes: Vec<u8>) {
        let len = bytes.len() as u64;
        self.push(Piece::Bytes(bytes.into()), len, None);
    }

    /// Ends the file with the zip tail of `len` bytes, which `build` makes.
    pub(crate) fn finish_with_tail(&mut self, len: u64, build: TailBuilder) {
        self.push(Piece::Tail, len, None);
        self.tail = Some(build);
    }
}

/// Bytes generated at a time when the facts are computed.
const PASS_BLOCK: usize = 32 << 20;
/// Bytes one thread generates of a pass block.
const PASS_SLICE: usize = 1 << 20;

pub(crate) struct VirtualFile {
    /// What the content is, in words; its sha256 is the key facts are kept under.
    pub(crate) definition: String,
    pub(crate) key: String,
    /// Where it was first served, for messages.
    pub(crate) label: String,
    layout: Layout,
    size: u64,
    store: Arc<FactsStore>,
    facts: OnceLock<Arc<Facts>>,
    tail: OnceLock<Arc<[u8]>>,
}

impl VirtualFile {
    pub(crate) fn new(
        definition: String,
        label: String,
        layout: Layout,
        store: Arc<FactsStore>,
    ) -> Self {
        let key = hex(&Sha256::digest(definition.as_bytes()));
        let size = layout.size();
        VirtualFile {
            definition,
            key,
            label,
            layout,
            size,
            store,
            facts: OnceLock::new(),
            tail: OnceLock::new(),
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The facts, from memory, the store, or a pass over the whole file (blocking; once).
    pub(crate) fn facts(&self) -> Arc<Facts> {
        self.facts
            .get_or_init(|| match self.store.get(&self.key) {
                Some(known) if known.size == self.size => known,
                _ => self.store.record(self.compute_facts()),
            })
            .clone()
    }

    /// Whether the facts are known without a pass.
    pub(crate) fn facts_known(&self) -> bool {
        self.facts.get().is_some() || self.store.get(&self.key).is_some()
    }

    fn tail_bytes(&self, crcs: &[u32]) -> Arc<[u8]> {
        self.tail
            .get_or_init(|| match &self.layout.tail {
                Some(build) => build(crcs).into(),
                None => Arc::from(Vec::new()),
            })
            .clone()
    }

    /// `count` bytes from `start` (blocking: may compute the facts first).
    pub(crate) fn read(&self, start: u64, count: u64) -> Vec<u8> {
        let mut out = vec![0u8; count as usize];
        let end = start + count;
        let segments = &self.layout.segments;
        let first = segments.partition_point(|s| s.start + s.len <= start);
        let needs_facts = segments[first..]
            .iter()
            .take_while(|s| s.start < end)
            .any(|s| matches!(s.piece, Piece::Crc(_) | Piece::Tail));
        let facts = needs_facts.then(|| self.facts());
        let crcs = facts.as_ref().map_or(&[][..], |f| f.crcs.as_slice());
        for seg in segments[first..].iter().take_while(|s| s.start < end) {
            let from = start.max(seg.start);
            let to = end.min(seg.start + seg.len);
            let dest = &mut out[(from - start) as usize..(to - start) as usize];
            self.fill(seg, from - seg.start, dest, crcs);
        }
        out
    }

    /// Bytes of `seg` from `from` (within it) into `out`.
    fn fill(&self, seg: &Segment, from: u64, out: &mut [u8], crcs: &[u32]) {
        let from_usize = from as usize;
        match &seg.piece {
            Piece::Bytes(bytes) => out.copy_from_slice(&bytes[from_usize..from_usize + out.len()]),
            Piece::Crc(k) => {
                let crc = crcs.get(*k).copied().unwrap_or(0).to_le_bytes();
                out.copy_from_slice(&crc[from_usize..from_usize + out.len()]);
            }
            Piece::Tail => {
                let tail = self.tail_bytes(crcs);
                out.copy_from_slice(&tail[from_usize..from_usize + out.len()]);
            }
            Piece::Data(data) => fill_data(data, from, out),
        }
    }

    /// The sha256 of the whole file and the CRC of every storage record.
    fn compute_facts(&self) -> Facts {
        let started = std::time::Instant::now();
        let mut sha = Sha256::new();
        let mut storage_crcs = vec![crc32fast::Hasher::new(); self.layout.storages];
        let mut crcs = vec![0u32; self.layout.storages];
        let mut block = Vec::new();
        for seg in &self.layout.segments {
            match &seg.piece {
                Piece::Crc(k) => {
                    crcs[*k] = storage_crcs[*k].clone().finalize();
                    sha.update(crcs[*k].to_le_bytes());
                }
                Piece::Tail => sha.update(&*self.tail_bytes(&crcs)),
                Piece::Bytes(bytes) => {
                    sha.update(bytes);
                    if let Some(k) = seg.storage {
                        storage_crcs[k].update(bytes);
                    }
                }
                Piece::Data(data) => {
                    let mut at = 0;
                    while at < seg.len {
                        let n = (seg.len - at).min(PASS_BLOCK as u64) as usize;
                        block.resize(n, 0);
                        block
                            .par_chunks_mut(PASS_SLICE)
                            .enumerate()
                            .for_each(|(i, slice)| {
                                fill_data(data, at + (i * PASS_SLICE) as u64, slice)
                            });
                        sha.update(&block);
                        if let Some(k) = seg.storage {
                            storage_crcs[k].update(&block);
                        }
                        at += n as u64;
                    }
                }
            }
        }
        tracing::debug!(
            file = %self.label,
            definition = %self.definition,
            bytes = self.size,
            seconds = started.elapsed().as_secs_f64(),
            "hashed a virtual file"
        );
        Facts {
            key: self.key.clone(),
            size: self.size,
            sha256: hex(&sha.finalize()),
            crcs,
        }
    }
}

/// Bytes of `data` from byte `from` into `out`.
fn fill_data(data: &Data, from: u64, out: &mut [u8]) {
    match data {
        Data::Bytes(bytes) => {
            let from = from as usize;
            out.copy_from_slice(&bytes[from..from + out.len()]);
        }
        Data::Constant(word) => {
            for (i, b) in out.iter_mut().enumerate() {
                *b = word[((from + i as u64) % 2) as usize];
            }
        }
        Data::Mask { n } => {
            for (i, b) in out.iter_mut().enumerate() {
                let at = from + i as u64;
                let (row, col) = ((at / n) % n, at % n);
                *b = u8::from(col <= row);
            }
        }
        Data::Normal { tensor, table } => {
            // Whole elements: widen an odd start or end by a byte and copy the middle.
            let (first, last) = (from / 2, (from + out.len() as u64).div_ceil(2));
            if from.is_multiple_of(2) && out.len().is_multiple_of(2) {
                tensor.fill(table, first, out);
            } else {
                let mut whole = vec![0u8; ((last - first) * 2) as usize];
                tensor.fill(table, first, &mut whole);
                let skip = (from % 2) as usize;
                out.copy_from_slice(&whole[skip..skip + out.len()]);
            }
        }
    }
}
