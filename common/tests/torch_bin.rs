//! PyTorch `.bin` checkpoints: every fixture reads the same weights as its safetensors
//! twin, the stage parsers work over partial bytes as a ranged reader would give them,
//! and every kind of bad input is one named error, never a panic.

use std::ops::Range;
use std::path::{Path, PathBuf};

use neuromfa_common::checkpoint::{
    choose_weight_files, TensorLayout, WeightFiles, WeightFormat, SINGLE_FILE,
};
use neuromfa_common::error::TorchError;
use neuromfa_common::network::gathers;
use neuromfa_common::sampler::draw_snin;
use neuromfa_common::torch::zip::{self, DataStart, EntryData, Tail};
use neuromfa_common::torch::{pickle, tensor_element, tensor_layout, Archive, TorchFile};
use neuromfa_common::{BlockTensor, Checkpoint, Error};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data")
}

fn bin_dir(variant: &str) -> PathBuf {
    data_dir().join("bin").join(variant)
}

fn golden(step: u64) -> PathBuf {
    data_dir().join(format!("golden/tiny-neox/step{step}"))
}

/// Each `.bin` fixture and the safetensors checkpoint it was written from.
fn twins() -> Vec<(PathBuf, PathBuf)> {
    vec![
        (bin_dir("single/step1000"), golden(1000)),
        (bin_dir("sharded/step0"), golden(0)),
        (bin_dir("torch-save/step2000"), golden(2000)),
    ]
}

fn needed(checkpoint: &Checkpoint) -> Vec<(usize, BlockTensor)> {
    (0..checkpoint.shape().num_blocks)
        .flat_map(|b| BlockTensor::ALL.map(|t| (b, t)))
        .collect()
}

#[test]
fn every_weight_of_every_fixture_equals_its_safetensors_twin() {
    for (bin, safetensors) in twins() {
        let (ours, twin) = (
            Checkpoint::open(&bin).unwrap(),
            Checkpoint::open(&safetensors).unwrap(),
        );
        assert_eq!(ours.shape(), twin.shape());
        for (block, tensor) in needed(&ours) {
            let [rows, cols] = tensor.expected_shape(ours.shape());
            let (rows, cols): (Vec<usize>, Vec<usize>) = ((0..rows).collect(), (0..cols).collect());
            let a = ours.gather(block, tensor, &rows, &cols).unwrap();
            let b = twin.gather(block, tensor, &rows, &cols).unwrap();
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{}: block {block} {tensor:?} differs from {}",
                bin.display(),
                safetensors.display()
            );
        }
        // And through the reads the samples of every seed make, in their order.
        for seed in 0..10 {
            let draw = draw_snin(seed, ours.shape(), 32).unwrap();
            for read in gathers(&draw, ours.shape().hidden_size) {
                let a = ours.gather(read.block, read.tensor, &read.rows, &read.cols);
                let b = twin.gather(read.block, read.tensor, &read.rows, &read.cols);
                assert_eq!(a.unwrap(), b.unwrap(), "{} seed {seed}", bin.display());
            }
        }
    }
}

#[test]
fn views_of_shared_and_transposed_storages_have_their_strides() {
    let path = bin_dir("single/step1000/pytorch_model.bin");
    let bytes = std::fs::read(&path).unwrap();
    let file = TorchFile::parse(&bytes).unwrap();
    let layout = |name: &str| {
        let layout = file.layout(&bytes, name, "pytorch_model.bin").unwrap();
        layout.unwrap_or_else(|| panic!("no {name}"))
    };
    let tensor = |block: usize, t: BlockTensor| layout(&t.name(block));
    // Block 3's MLP-down weight [64, 256] is a view of its transpose.
    assert_eq!(tensor(3, BlockTensor::MlpDown).strides, vec![1, 64]);
    // Block 1's QKV weight follows its bias in one storage.
    let bias = layout("gpt_neox.layers.1.attention.query_key_value.bias");
    let qkv = tensor(1, BlockTensor::Qkv);
    assert_eq!(
        (qkv.offset, qkv.strides.as_slice()),
        (bias.end(), [64, 1].as_slice())
    );
    // Block 2's MLP-up weight follows the attention dense weight in one storage.
    let dense = tensor(2, BlockTensor::AttentionDense);
    assert_eq!(tensor(2, BlockTensor::MlpUp).offset, dense.end());
    // The checkpoint reads through the same layouts.
    let checkpoint = Checkpoint::open(path.parent().unwrap()).unwrap();
    assert_eq!(checkpoint.layout(1, BlockTensor::Qkv), Some(&qkv));
}

#[test]
fn weight_files_are_chosen_safetensors_first() {
    let choose = |names: &[&str]| choose_weight_files(names);
    let files = |format, sharded| Some(WeightFiles { format, sharded });
    use WeightFormat::{PytorchBin, Safetensors};
    assert_eq!(choose(&["config.json"]), None);
    assert_eq!(choose(&["pytorch_model.bin"]), files(PytorchBin, false));
    assert_eq!(
        choose(&[
            "pytorch_model-00001-of-00002.bin",
            "pytorch_model.bin.index.json"
        ]),
        files(PytorchBin, true)
    );
    assert_eq!(
        choose(&["pytorch_model.bin", "model.safetensors.index.json"]),
        files(Safetensors, true)
    );
    assert_eq!(
        choose(&["model.safetensors.index.json", "model.safetensors"]),
        files(Safetensors, false)
    );
    assert_eq!(
        files(PytorchBin, true).unwrap().entry_file(),
        "pytorch_model.bin.index.json"
    );
    assert_eq!(files(Safetensors, false).unwrap().entry_file(), SINGLE_FILE);
    for format in [Safetensors, PytorchBin] {
        assert_eq!(format.as_str().parse::<WeightFormat>(), Ok(format));
    }
}

/// A file read only through byte ranges, counting what was fetched.
struct RangedFile {
    bytes: Vec<u8>,
    fetched: u64,
    requests: u32,
}

impl RangedFile {
    fn fetch(&mut self, range: Range<u64>) -> Vec<u8> {
        let end = range.end.min(self.bytes.len() as u64);
        self.fetched += end - range.start;
        self.requests += 1;
        self.bytes[range.start as usize..end as usize].to_vec()
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// Every needed tensor's layout as a ranged reader finds it: the stages of
/// `neuromfa_common::torch`, each fed only the bytes it asked for, starting from a
/// suffix of `tail` bytes.
fn layouts_by_ranges(
    file: &mut RangedFile,
    name: &str,
    tail: u64,
    tensors: &[String],
) -> Vec<TensorLayout> {
    let mut start = file.len().saturating_sub(tail);
    let directory = loop {
        let suffix = file.fetch(start..file.len());
        match zip::parse_tail(&suffix, start, file.len()).unwrap() {
            Tail::Directory(directory) => break directory,
            Tail::NeedFrom(offset) => {
                assert!(offset < start, "asks again for what it has");
                start = offset;
            }
        }
    };
    let archive = Archive::new(directory).unwrap();
    let span = archive.pickle_span().unwrap();
    let bytes = file.fetch(span.clone());
    let EntryData::Bytes(pkl) = archive.pickle(&bytes).unwrap() else {
        panic!("the pickle span holds data.pkl")
    };
    let pickled = pickle::parse_state_dict(pkl).unwrap();
    let mut layouts = Vec::new();
    for tensor in pickled.iter().filter(|t| tensors.contains(&t.name)) {
        tensor_element(tensor).unwrap();
        let entry = archive.storage_entry(tensor).unwrap();
        let mut header = file.fetch(entry.header_span());
        let data_start = loop {
            match archive.directory.data_start(entry, &header).unwrap() {
                DataStart::At(at) => break at,
                DataStart::NeedBytes(n) => {
                    let from = entry.local_header_offset;
                    header = file.fetch(from..from + n);
                }
            }
        };
        layouts.push(tensor_layout(tensor, entry, data_start, name).unwrap());
    }
    layouts
}

#[test]
fn a_ranged_reader_drives_the_stages_to_the_layouts_the_map_gives() {
    let single = bin_dir("single/step1000");
    let sharded = bin_dir("sharded/step0");
    let files = [
        (single.clone(), "pytorch_model.bin"),
        (sharded.clone(), "pytorch_model-00001-of-00003.bin"),
        // Forced ZIP64: the locator and ZIP64 end record lie before a short suffix.
        (sharded.clone(), "pytorch_model-00003-of-00003.bin"),
        (bin_dir("torch-save/step2000"), "pytorch_model.bin"),
    ];
    for (dir, name) in files {
        let checkpoint = Checkpoint::open(&dir).unwrap();
        let mapped: Vec<TensorLayout> = needed(&checkpoint)
            .into_iter()
            .filter_map(|(b, t)| checkpoint.layout(b, t).cloned())
            .filter(|l| l.file == name)
            .collect();
        let names: Vec<String> = needed(&checkpoint)
            .into_iter()
            .filter(|&(b, t)| checkpoint.layout(b, t).is_some_and(|l| l.file == name))
            .map(|(b, t)| t.name(b))
            .collect();
        for tail in [zip::TAIL_GUESS, 30, 1] {
            let mut file = RangedFile {
                bytes: std::fs::read(dir.join(name)).unwrap(),
                fetched: 0,
                requests: 0,
            };
            let mut ranged = layouts_by_ranges(&mut file, name, tail, &names);
            ranged.sort_by_key(|l| l.offset);
            let mut expected = mapped.clone();
            expected.sort_by_key(|l| l.offset);
            assert_eq!(ranged, expected, "{name} from a {tail}-byte tail");
            if tail == zip::TAIL_GUESS {
                // One suffix, one range for data.pkl, one header per tensor.
                assert_eq!(file.requests as usize, 2 + names.len(), "{name}");
            }
        }
    }
}

#[test]
fn partial_local_headers_ask_for_the_bytes_they_lack() {
    let bytes = std::fs::read(bin_dir("single/step1000/pytorch_model.bin")).unwrap();
    let Tail::Directory(directory) = zip::parse_tail(&bytes, 0, bytes.len() as u64).unwrap() else {
        panic!("a whole file holds its directory")
    };
    let archive = Archive::new(directory).unwrap();
    assert_eq!(archive.prefix, "pytorch_model");
    let entry = archive.record("data/0").unwrap();
    let at = entry.local_header_offset as usize;
    let data_start = |len: usize| archive.directory.data_start(entry, &bytes[at..at + len]);
    assert_eq!(
        data_start(12),
        Ok(DataStart::NeedBytes(zip::LOCAL_HEADER_LEN as u64))
    );
    let Ok(DataStart::NeedBytes(whole)) = data_start(zip::LOCAL_HEADER_LEN) else {
        panic!("the name and extra field follow the fixed header")
    };
    let Ok(DataStart::At(start)) = data_start(whole as usize) else {
        panic!("the whole header gives the data start")
    };
    // torch aligns every storage to 64 bytes, and the header span covers its header.
    assert_eq!(start % 64, 0);
    assert!(entry.header_span().end >= start);
}

fn open_error(dir: &Path) -> Error {
    match Checkpoint::open(dir) {
        Ok(_) => panic!("{} opened", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn each_bad_archive_is_its_own_named_error() {
    let torch_problem = |case: &str| {
        let dir = bin_dir(&format!("bad/{case}/step0"));
        match open_error(&dir) {
            Error::Torch { path, problem } => {
                assert_eq!(path, dir.join("pytorch_model.bin"), "{case}");
                problem
            }
            other => panic!("{case}: {other}"),
        }
    };
    let storage = "pytorch_model/data/0".to_string();
    let qkv = "gpt_neox.layers.0.attention.query_key_value.weight".to_string();
    assert_eq!(
        torch_problem("deflated"),
        TorchError::Compressed {
            entry: storage.clone(),
            method: 8
        }
    );
    assert_eq!(
        torch_problem("encrypted"),
        TorchError::Encrypted {
            entry: storage.clone()
        }
    );
    assert_eq!(
        torch_problem("unknown-global"),
        TorchError::UnknownGlobal {
            module: "__builtin__".into(),
            name: "eval".into()
        }
    );
    assert_eq!(
        torch_problem("missing-storage"),
        TorchError::MissingStorage {
            tensor: qkv.clone(),
            entry: "pytorch_model/data/7".into()
        }
    );
    assert!(matches!(
        torch_problem("outside-storage"),
        TorchError::OutsideStorage { tensor, entry, needed: 24704, available: 24576 }
            if tensor == qkv && entry == storage
    ));
    assert_eq!(
        torch_problem("big-endian"),
        TorchError::ByteOrder("big".into())
    );
    assert_eq!(torch_problem("legacy"), TorchError::Legacy);
    match open_error(&bin_dir("bad/wrong-dtype/step0")) {
        Error::UnsupportedDtype { tensor, dtype, .. } => {
            assert_eq!((tensor, dtype), (qkv, "LongStorage".to_string()))
        }
        other => panic!("wrong-dtype: {other}"),
    }
}

/// What `TorchFile` makes of `bytes`: an error, or layouts of the tensors it can place,
/// each of which must lie within the bytes.
fn parse_damaged(bytes: &[u8], names: &[String]) -> Result<(), TorchError> {
    let file = TorchFile::parse(bytes)?;
    for name in names {
        if let Some(layout) = file.layout(bytes, name, "damaged.bin")? {
            assert!(
                layout.end() <= bytes.len() as u64,
                "{name} placed past the end"
            );
        }
    }
    Ok(())
}

#[test]
fn truncated_and_damaged_archives_are_errors_never_panics() {
    let dir = bin_dir("sharded/step0");
    let checkpoint = Checkpoint::open(&dir).unwrap();
    let names: Vec<String> = needed(&checkpoint)
        .into_iter()
        .map(|(b, t)| t.name(b))
        .collect();
    for shard in [
        "pytorch_model-00002-of-00003.bin",
        "pytorch_model-00003-of-00003.bin",
    ] {
        let good = std::fs::read(dir.join(shard)).unwrap();
        parse_damaged(&good, &names).unwrap();
        // Any cut loses the end records, or at least the directory's end.
        for len in (0..good.len())
            .step_by(97)
            .chain(good.len() - 300..good.len())
        {
            assert!(
                parse_damaged(&good[..len], &names).is_err(),
                "{shard} cut at {len}"
            );
        }
        // Flipped bytes everywhere but inside storages, where they are only other weights.
        let file = TorchFile::parse(&good).unwrap();
        let storages: Vec<Range<usize>> = file
            .archive()
            .directory
            .entries
            .iter()
            .filter(|e| e.name.contains("/data/"))
            .map(|e| {
                let start = e.header_span().end as usize;
                start..e.local_header_offset as usize + e.compressed_size as usize
            })
            .collect();
        for at in (0..good.len()).filter(|at| !storages.iter().any(|r| r.contains(at))) {
            for flip in [0x01, 0x80, 0xFF] {
                let mut bad = good.clone();
                bad[at] ^= flip;
                let _ = parse_damaged(&bad, &names);
            }
        }
    }
}

#[test]
fn a_corrupt_central_directory_is_named() {
    let good = std::fs::read(bin_dir("single/step1000/pytorch_model.bin")).unwrap();
    let file = TorchFile::parse(&good).unwrap();
    let at = file.archive().directory.offset as usize;
    let mut bad = good.clone();
    bad[at..at + 4].copy_from_slice(b"XXXX");
    let err = TorchFile::parse(&bad).unwrap_err();
    assert!(
        matches!(err, TorchError::CorruptZip(ref m) if m.contains("no signature")),
        "{err}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("step1000");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(golden(1000).join("config.json"), dir.join("config.json")).unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), &bad).unwrap();
    let message = open_error(&dir).to_string();
    assert!(
        message.contains("pytorch_model.bin") && message.contains("central directory entry 0"),
        "{message}"
    );
}
