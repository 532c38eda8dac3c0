//! A virtual PyTorch `.bin`: the zip archive `torch.save` writes (PyTorchStreamWriter over
//! miniz), with a protocol-2 pickle of the state dict as Python's pickler writes it.
//!
//! Every record is stored uncompressed under one folder named after the file's stem,
//! general-purpose flags 0x0808 (sizes in a data descriptor after the data), its data
//! aligned to 64 bytes by an `FB` extra field padded with `Z`, DOS time and date 0. One
//! storage per tensor, keyed `0, 1, …` in state-dict order.
//!
//! - [`Style::Modern`] is torch 2's layout: `data.pkl`, `.format_version`,
//!   `.storage_alignment`, `byteorder`, the storages in key order, `version`,
//!   `.data/serialization_id`, and a ZIP64 end record and locator before the end record;
//!   the state dict is an `OrderedDict` with `_metadata`.
//! - [`Style::Legacy`] is torch 1's, as transformers saved shards with it: `version` first,
//!   `data.pkl`, the storages in key order as strings (`0, 1, 10, 11, …, 2`); no byte-order
//!   record; the state dict is a plain dict.
//!
//! With `zip64` every record carries ZIP64 fields (local and central extra fields, 64-bit
//! data descriptors, sizes and offsets marked `0xFFFFFFFF`) and the end records are ZIP64,
//! as for archives over 4 GiB.

use std::collections::HashMap;

use neuromfa_common::torch::pickle::op;
use sha2::{Digest, Sha256};

use super::file::{Dtype, Layout, Piece, TensorData};

/// Which torch wrote the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Modern,
    Legacy,
}

const ALIGNMENT: u64 = 64;
const FLAGS: u16 = 0x0808;
const MARK32: u32 = 0xFFFF_FFFF;
const LOCAL: u32 = 0x0403_4B50;
const DESCRIPTOR: u32 = 0x0807_4B50;
const CENTRAL: u32 = 0x0201_4B50;
const END: u32 = 0x0605_4B50;
const END64: u32 = 0x0606_4B50;
const LOCATOR64: u32 = 0x0706_4B50;

/// A record's contents, and the CRC when it is known without the facts.
enum Contents {
    Bytes(Vec<u8>),
    /// Storage `k`: the data of tensor `k`.
    Storage(usize),
}

struct Record {
    name: String,
    offset: u64,
    size: u64,
    /// `None` for a storage: its CRC comes with the facts.
    crc: Option<u32>,
    storage: Option<usize>,
}

/// The archive of `tensors` (one storage each) whose records are under `prefix/`.
pub(crate) fn layout(prefix: &str, style: Style, zip64: bool, tensors: &[TensorData]) -> Layout {
    let pickle = match style {
        Style::Modern => state_dict_pickle(tensors, true),
        Style::Legacy => state_dict_pickle(tensors, false),
    };
    let mut storage_order: Vec<usize> = (0..tensors.len()).collect();
    if style == Style::Legacy {
        storage_order.sort_by_key(|k| k.to_string());
    }
    let storages = storage_order
        .iter()
        .map(|&k| (format!("data/{k}"), Contents::Storage(k)));
    let mut contents: Vec<(String, Contents)> = Vec::new();
    match style {
        Style::Modern => {
            contents.push(("data.pkl".into(), Contents::Bytes(pickle)));
            contents.push((".format_version".into(), Contents::Bytes(b"1".to_vec())));
            contents.push((".storage_alignment".into(), Contents::Bytes(b"64".to_vec())));
            contents.push(("byteorder".into(), Contents::Bytes(b"little".to_vec())));
            contents.extend(storages);
            contents.push(("version".into(), Contents::Bytes(b"3\n".to_vec())));
            let names: Vec<&str> = contents.iter().map(|(n, _)| n.as_str()).collect();
            let id = serialization_id(&names);
            contents.push((
                ".data/serialization_id".into(),
                Contents::Bytes(id.into_bytes()),
            ));
        }
        Style::Legacy => {
            contents.push(("version".into(), Contents::Bytes(b"3\n".to_vec())));
            contents.push(("data.pkl".into(), Contents::Bytes(pickle)));
            contents.extend(storages);
        }
    }

    let mut layout = Layout::default();
    layout.storages = tensors.len();
    let mut records = Vec::with_capacity(contents.len());
    for (name, contents) in contents {
        let name = format!("{prefix}/{name}");
        let offset = layout.size();
        let (size, crc, storage) = match &contents {
            Contents::Bytes(b) => (b.len() as u64, Some(crc32fast::hash(b)), None),
            Contents::Storage(k) => (tensors[*k].byte_len(), None, Some(*k)),
        };
        // The local header, the name, and the extra field that aligns the data.
        let zip64_extra = zip64.then(|| zip64_field(size, offset));
        let extra_len = zip64_extra.as_ref().map_or(0, Vec::len) as u64;
        let data_start = offset + 30 + name.len() as u64 + extra_len + 4;
        let padding = (ALIGNMENT - data_start % ALIGNMENT) % ALIGNMENT;
        let mut head = Vec::new();
        put32(&mut head, LOCAL);
        put16(&mut head, if zip64 { 45 } else { 0 });
        put16(&mut head, FLAGS);
        put16(&mut head, 0); // stored
        put16(&mut head, 0); // time
        put16(&mut head, 0); // date
        put32(&mut head, 0); // CRC and sizes follow the data
        put32(&mut head, 0);
        put32(&mut head, 0);
        put16(&mut head, name.len() as u16);
        put16(&mut head, (extra_len + 4 + padding) as u16);
        head.extend_from_slice(name.as_bytes());
        head.extend(zip64_extra.unwrap_or_default());
        head.extend_from_slice(b"FB");
        put16(&mut head, padding as u16);
        head.resize(head.len() + padding as usize, b'Z');
        layout.push_bytes(head);
        // The data, then the descriptor.
        match contents {
            Contents::Bytes(b) => layout.push_bytes(b),
            Contents::Storage(k) => {
                layout.push(Piece::Data(tensors[k].data.clone()), size, Some(k));
            }
        }
        let mut sizes = Vec::new();
        if zip64 {
            put64(&mut sizes, size);
            put64(&mut sizes, size);
        } else {
            put32(&mut sizes, size as u32);
            put32(&mut sizes, size as u32);
        }
        match (crc, storage) {
            (Some(crc), _) => {
                let mut d = Vec::new();
                put32(&mut d, DESCRIPTOR);
                put32(&mut d, crc);
                d.extend(sizes);
                layout.push_bytes(d);
            }
            (None, Some(k)) => {
                layout.push_bytes(DESCRIPTOR.to_le_bytes().to_vec());
                layout.push(Piece::Crc(k), 4, None);
                layout.push_bytes(sizes);
            }
            (None, None) => unreachable!("a record is bytes or a storage"),
        }
        records.push(Record {
            name,
            offset,
            size,
            crc,
            storage,
        });
    }
    let directory_at = layout.size();
    // Its length does not depend on the CRCs.
    let tail_len = tail(
        &records,
        directory_at,
        zip64,
        style,
        &vec![0; tensors.len()],
    )
    .len();
    let end_records = move |crcs: &[u32]| tail(&records, directory_at, zip64, style, crcs);
    layout.finish_with_tail(tail_len as u64, Box::new(end_records));
    layout
}

/// The central directory and the end records.
fn tail(records: &[Record], directory_at: u64, zip64: bool, style: Style, crcs: &[u32]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let crc = r
            .crc
            .or_else(|| r.storage.and_then(|k| crcs.get(k).copied()))
            .unwrap_or(0);
        let version = if zip64 { 45 } else { 0 };
        let extra = if zip64 {
            zip64_field(r.size, r.offset)
        } else {
            Vec::new()
        };
        put32(&mut out, CENTRAL);
        put16(&mut out, version); // made by
        put16(&mut out, version); // needed
        put16(&mut out, FLAGS);
        put16(&mut out, 0);
        put16(&mut out, 0);
        put16(&mut out, 0);
        put32(&mut out, crc);
        let (size, offset) = if zip64 {
            (MARK32, MARK32)
        } else {
            (r.size as u32, r.offset as u32)
        };
        put32(&mut out, size);
        put32(&mut out, size);
        put16(&mut out, r.name.len() as u16);
        put16(&mut out, extra.len() as u16);
        put16(&mut out, 0); // comment
        put16(&mut out, 0); // disk
        put16(&mut out, 0); // internal attributes
        put32(&mut out, 0); // external attributes
        put32(&mut out, offset);
        out.extend_from_slice(r.name.as_bytes());
        out.extend(extra);
    }
    let directory_len = out.len() as u64;
    let count = records.len() as u64;
    if zip64 || style == Style::Modern {
        let record_at = directory_at + directory_len;
        put32(&mut out, END64);
        put64(&mut out, 44);
        put16(&mut out, if zip64 { 45 } else { 798 });
        put16(&mut out, 45);
        put32(&mut out, 0);
        put32(&mut out, 0);
        put64(&mut out, count);
        put64(&mut out, count);
        put64(&mut out, directory_len);
        put64(&mut out, directory_at);
        put32(&mut out, LOCATOR64);
        put32(&mut out, 0);
        put64(&mut out, record_at);
        put32(&mut out, 1);
    }
    put32(&mut out, END);
    put16(&mut out, 0);
    put16(&mut out, 0);
    if zip64 {
        put16(&mut out, 0xFFFF);
        put16(&mut out, 0xFFFF);
        put32(&mut out, MARK32);
        put32(&mut out, MARK32);
    } else {
        put16(&mut out, count as u16);
        put16(&mut out, count as u16);
        put32(&mut out, directory_len as u32);
        put32(&mut out, directory_at as u32);
    }
    put16(&mut out, 0);
    out
}

/// The ZIP64 extended-information field: both sizes and the local header's offset.
fn zip64_field(size: u64, offset: u64) -> Vec<u8> {
    let mut f = Vec::with_capacity(28);
    put16(&mut f, 1);
    put16(&mut f, 24);
    put64(&mut f, size);
    put64(&mut f, size);
    put64(&mut f, offset);
    f
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A deterministic stand-in for torch's serialization id: 40 decimal digits from the
/// record names (as `scripts/make-bin-fixtures.py` makes it).
fn serialization_id(names: &[&str]) -> String {
    let mut sorted: Vec<&str> = names.to_vec();
    sorted.sort_unstable();
    let digest = Sha256::digest(sorted.concat().as_bytes());
    let mut low = [0u8; 16];
    low.copy_from_slice(&digest[..16]);
    let digits = u128::from_le_bytes(low).to_string();
    format!("{digits:0>40}")
}

/// Python's protocol-2 pickler, for what a state dict is made of: it memoises every object
/// it writes (`BINPUT`) and writes a memoised one again as `BINGET`.
struct Pickler {
    out: Vec<u8>,
    next_memo: u32,
    /// Globals and the few strings Python shares by identity (`'storage'`, `'cpu'`).
    memo: HashMap<String, u32>,
}

/// Items per `SETITEMS`, as Python batches them.
const BATCH: usize = 1000;

impl Pickler {
    fn new() -> Self {
        Pickler {
            out: vec![op::PROTO, 2],
            next_memo: 0,
            memo: HashMap::new(),
        }
    }

    /// Memoises the object just written.
    fn put(&mut self) -> u32 {
        let at = self.next_memo;
        if at < 256 {
            self.out.extend([op::BINPUT, at as u8]);
        } else {
            self.out.push(op::LONG_BINPUT);
            self.out.extend(at.to_le_bytes());
        }
        self.next_memo += 1;
        at
    }

    fn get(&mut self, at: u32) {
        if at < 256 {
            self.out.extend([op::BINGET, at as u8]);
        } else {
            self.out.push(op::LONG_BINGET);
            self.out.extend(at.to_le_bytes());
        }
    }

    /// A name shared by identity: written once, fetched from the memo after.
    fn shared(&mut self, key: String, write: impl FnOnce(&mut Self)) {
        match self.memo.get(&key) {
            Some(&at) => self.get(at),
            None => {
                write(self);
                let at = self.put();
                self.memo.insert(key, at);
            }
        }
    }

    fn global(&mut self, module: &str, name: &str) {
        self.shared(format!("global {module}.{name}"), |p| {
            p.out.push(op::GLOBAL);
            p.out
                .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        });
    }

    fn string(&mut self, s: &str) {
        self.out.push(op::BINUNICODE);
        self.out.extend((s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
        self.put();
    }

    fn shared_string(&mut self, s: &str) {
        self.shared(format!("str {s}"), |p| {
            p.out.push(op::BINUNICODE);
            p.out.extend((s.len() as u32).to_le_bytes());
            p.out.extend_from_slice(s.as_bytes());
        });
    }

    fn int(&mut self, v: u64) {
        if v <= 0xFF {
            self.out.extend([op::BININT1, v as u8]);
        } else if v <= 0xFFFF {
            self.out.push(op::BININT2);
            self.out.extend((v as u16).to_le_bytes());
        } else {
            // Tensors of virtual checkpoints stay below 2^31 elements.
            self.out.push(op::BININT);
            self.out.extend((v as u32).to_le_bytes());
        }
    }

    /// A tuple of ints.
    fn int_tuple(&mut self, items: &[u64]) {
        match items.len() {
            0 => {
                self.out.push(op::EMPTY_TUPLE);
                return;
            }
            1..=3 => {
                items.iter().for_each(|&v| self.int(v));
                self.out
                    .push([op::TUPLE1, op::TUPLE2, op::TUPLE3][items.len() - 1]);
            }
            _ => {
                self.out.push(op::MARK);
                items.iter().for_each(|&v| self.int(v));
                self.out.push(op::TUPLE);
            }
        }
        self.put();
    }

    /// `collections.OrderedDict()`.
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.out.extend([op::EMPTY_TUPLE, op::REDUCE]);
        self.put();
    }

    /// `torch._utils._rebuild_tensor_v2(storage, 0, shape, strides, False, OrderedDict())`.
    fn tensor(&mut self, key: &str, t: &TensorData) {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.push(op::MARK);
        // The storage, as a persistent id: ('storage', torch.<T>Storage, key, 'cpu', numel).
        self.out.push(op::MARK);
        self.shared_string("storage");
        let storage_type = match t.dtype {
            Dtype::F16 => "HalfStorage",
            Dtype::F32 => "FloatStorage",
            Dtype::Bool => "BoolStorage",
        };
        self.global("torch", storage_type);
        self.string(key);
        self.shared_string("cpu");
        self.int(t.numel());
        self.out.push(op::TUPLE);
        self.put();
        self.out.push(op::BINPERSID);
        self.int(0);
        self.int_tuple(&t.shape);
        let mut strides = vec![1u64; t.shape.len()];
        for i in (0..t.shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * t.shape[i + 1];
        }
        self.int_tuple(&strides);
        self.out.push(op::NEWFALSE);
        self.empty_ordered_dict();
        self.out.push(op::TUPLE);
        self.put();
        self.out.push(op::REDUCE);
        self.put();
    }
}

/// The pickled state dict: an `OrderedDict` with `_metadata` (`ordered`, as a module's
/// `state_dict()`), or a plain dict (a transformers shard).
fn state_dict_pickle(tensors: &[TensorData], ordered: bool) -> Vec<u8> {
    let mut p = Pickler::new();
    if ordered {
        p.global("collections", "OrderedDict");
        p.out.extend([op::EMPTY_TUPLE, op::REDUCE]);
    } else {
        p.out.push(op::EMPTY_DICT);
    }
    p.put();
    for (batch_at, batch) in tensors.chunks(BATCH).enumerate() {
        if batch.len() > 1 {
            p.out.push(op::MARK);
        }
        for (i, t) in batch.iter().enumerate() {
            p.string(&t.name);
            p.tensor(&(batch_at * BATCH + i).to_string(), t);
        }
        p.out.push(if batch.len() > 1 {
            op::SETITEMS
        } else {
            op::SETITEM
        });
    }
    if ordered {
        // The instance's __dict__: {'_metadata': OrderedDict([('', {'version': 1})])}.
        p.out.push(op::EMPTY_DICT);
        p.put();
        p.string("_metadata");
        p.empty_ordered_dict();
        p.string("");
        p.out.push(op::EMPTY_DICT);
        p.put();
        p.string("version");
        p.int(1);
        p.out.push(op::SETITEM);
        p.out.push(op::SETITEM);
        p.out.push(op::SETITEM);
        p.out.push(op::BUILD);
    }
    p.out.push(op::STOP);
    p.out
}
