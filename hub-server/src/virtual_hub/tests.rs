//! Virtual repositories read back with the project's own readers: every format opens, holds
//! the same weights, and carries correct hashes and CRCs.

use std::path::Path;

use neuromfa_common::torch::zip::{parse_tail, Tail};
use neuromfa_common::torch::TorchFile;
use neuromfa_common::{BlockTensor, Checkpoint};

use super::*;

/// One pythia-14m-shaped model, `test/p14`, at `steps`.
fn description(steps: Vec<u64>) -> Description {
    Description {
        formats: Formats::default(),
        models: vec![ModelDescription {
            repo: "test/p14".into(),
            like: Some("pythia-14m".into()),
            steps: StepList::Steps(steps),
            formats: None,
            duplicates: Vec::new(),
        }],
    }
}

/// Writes the files of `plan` of the hub's only model into `dir`; returns them.
fn write_plan(hub: &VirtualHub, plan: Plan, dir: &Path) -> Vec<(String, Arc<VirtualFile>)> {
    let model = &hub.inner.models[0];
    let files = hub.plan_files(model, "test", plan);
    std::fs::create_dir_all(dir).unwrap();
    for (path, file) in &files {
        std::fs::write(dir.join(path), file.read(0, file.size())).unwrap();
    }
    files
}

/// A few weights of every matrix of every block.
fn sample(checkpoint: &Checkpoint) -> Vec<f64> {
    let shape = *checkpoint.shape();
    let mut out = Vec::new();
    for block in 0..shape.num_blocks {
        for tensor in BlockTensor::ALL {
            let [rows, cols] = tensor.expected_shape(&shape);
            let values = checkpoint
                .gather(block, tensor, &[0, rows / 2, rows - 1], &[0, 1, cols - 1])
                .unwrap();
            out.extend(values);
        }
    }
    out
}

#[test]
fn every_format_opens_with_our_readers_and_holds_the_same_weights() {
    let hub = VirtualHub::new(&description(vec![1000]), None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut samples = Vec::new();
    for format in Format::ALL {
        let at = dir.path().join(format.as_str());
        let files = write_plan(
            &hub,
            Plan {
                content_step: 1000,
                format,
            },
            &at,
        );
        let names: Vec<String> = files.iter().map(|(p, _)| p.clone()).collect();
        let expected: Vec<String> = match format {
            Format::Safetensors => vec!["model.safetensors".into()],
            Format::Bin => vec!["pytorch_model.bin".into()],
            Format::SafetensorsSharded | Format::BinSharded => {
                let (stem, ext, index) = match format {
                    Format::BinSharded => ("pytorch_model", "bin", "pytorch_model.bin.index.json"),
                    _ => ("model", "safetensors", "model.safetensors.index.json"),
                };
                let n = files.len() - 2;
                assert!(n >= 2, "{format:?}: {n} shards");
                let mut names: Vec<String> = (1..=n)
                    .map(|k| format!("{stem}-{k:05}-of-{n:05}.{ext}"))
                    .collect();
                names.push(index.into());
                names
            }
        };
        assert_eq!(names[0], "config.json");
        assert_eq!(names[1..], expected[..], "{format:?}");
        let checkpoint = Checkpoint::open(&at).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        let values = sample(&checkpoint);
        assert!(values
            .iter()
            .all(|v| v.is_finite() && v.abs() < 1.0 && *v != 0.0));
        samples.push((format, values));
    }
    for (format, values) in &samples[1..] {
        assert_eq!(values, &samples[0].1, "{format:?} against safetensors");
    }
    // Another step moves the same weights.
    let other = write_plan(
        &hub,
        Plan {
            content_step: 143_000,
            format: Format::Safetensors,
        },
        &dir.path().join("end"),
    );
    assert_eq!(other.len(), 2);
    let end = sample(&Checkpoint::open(&dir.path().join("end")).unwrap());
    assert_ne!(end, samples[0].1);
}

#[test]
fn the_safetensors_header_is_the_one_synth_writes() {
    let hub = VirtualHub::new(&description(vec![0]), None).unwrap();
    let files = hub.plan_files(
        &hub.inner.models[0],
        "step0",
        Plan {
            content_step: 0,
            format: Format::Safetensors,
        },
    );
    let virtual_file = &files[1].1;
    let dir = tempfile::tempdir().unwrap();
    let preset = neuromfa_common::synth::find_preset("pythia-14m").unwrap();
    neuromfa_common::synth::write_checkpoint(&preset, dir.path(), 0).unwrap();
    let written = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let header_len = 8 + u64::from_le_bytes(written[..8].try_into().unwrap()) as usize;
    assert_eq!(
        virtual_file.read(0, header_len as u64),
        &written[..header_len]
    );
    assert_eq!(virtual_file.size(), written.len() as u64);
    let config = std::fs::read(dir.path().join("config.json")).unwrap();
    assert_eq!(files[0].1.read(0, files[0].1.size()), config);
}

/// `(name, crc, size, local header offset)` of each central-directory entry.
fn central_entries(bytes: &[u8]) -> Vec<(String, u32, u64, u64)> {
    let Tail::Directory(directory) = parse_tail(bytes, 0, bytes.len() as u64).unwrap() else {
        panic!("the tail is in the file");
    };
    let mut at = directory.offset as usize;
    let mut out = Vec::new();
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    for entry in &directory.entries {
        assert_eq!(u32_at(at), 0x0201_4B50);
        let (name_len, extra_len) = (u16_at(at + 28), u16_at(at + 30));
        let name = String::from_utf8(bytes[at + 46..at + 46 + name_len].to_vec()).unwrap();
        assert_eq!(name, entry.name);
        out.push((name, u32_at(at + 16), entry.size, entry.local_header_offset));
        at += 46 + name_len + extra_len;
    }
    out
}

/// Checks every record of a `.bin`: data aligned to 64 bytes, and the CRCs of the central
/// directory and of the data descriptor those of the data; returns the record names.
fn check_archive(bytes: &[u8]) -> Vec<String> {
    let Tail::Directory(directory) = parse_tail(bytes, 0, bytes.len() as u64).unwrap() else {
        panic!("the tail is in the file");
    };
    let mut names = Vec::new();
    for (name, crc, size, offset) in central_entries(bytes) {
        let entry = directory.entry(&name).unwrap();
        let start = match directory
            .data_start(entry, &bytes[offset as usize..])
            .unwrap()
        {
            neuromfa_common::torch::zip::DataStart::At(start) => start,
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(start % 64, 0, "{name} is aligned");
        let data = &bytes[start as usize..(start + size) as usize];
        assert_eq!(crc32fast::hash(data), crc, "{name}: central CRC");
        let descriptor = &bytes[(start + size) as usize..];
        assert_eq!(&descriptor[..4], &0x0807_4B50u32.to_le_bytes());
        assert_eq!(
            &descriptor[4..8],
            &crc.to_le_bytes(),
            "{name}: descriptor CRC"
        );
        names.push(name);
    }
    names
}

#[test]
fn bin_archives_are_laid_out_as_torch_writes_them() {
    let mut d = description(vec![0]);
    d.formats.shard_bytes = 6_000_000;
    let hub = VirtualHub::new(&d, None).unwrap();
    let model = &hub.inner.models[0];
    let single = hub.plan_files(
        model,
        "step0",
        Plan {
            content_step: 0,
            format: Format::Bin,
        },
    );
    let bytes = single[1].1.read(0, single[1].1.size());
    let names = check_archive(&bytes);
    // torch 2: the pickle first, the storages in key order, the id last.
    assert_eq!(
        names[..4],
        [
            "pytorch_model/data.pkl",
            "pytorch_model/.format_version",
            "pytorch_model/.storage_alignment",
            "pytorch_model/byteorder"
        ]
    );
    assert_eq!(names[4], "pytorch_model/data/0");
    assert_eq!(names[5], "pytorch_model/data/1");
    assert_eq!(
        names.last().unwrap(),
        "pytorch_model/.data/serialization_id"
    );
    let file = TorchFile::parse(&bytes).unwrap();
    // Masks and float buffers are in the archive; the reader refuses to take them for weights.
    assert!(file.archive().record("data/5").is_some());
    let layout = file
        .layout(
            &bytes,
            "gpt_neox.layers.0.mlp.dense_4h_to_h.weight",
            "pytorch_model.bin",
        )
        .unwrap()
        .unwrap();
    assert_eq!(layout.shape, vec![128, 512]);
    assert!(file
        .layout(&bytes, "gpt_neox.layers.0.attention.bias", "x")
        .is_err());

    // torch 1's shards: version first, the storages in key order as strings; the facts
    // of a shard are its own.
    let sharded = hub.plan_files(
        model,
        "step0",
        Plan {
            content_step: 0,
            format: Format::BinSharded,
        },
    );
    assert!(sharded.len() > 3, "{} files", sharded.len());
    let shard = &sharded[1].1;
    let bytes = shard.read(0, shard.size());
    let names = check_archive(&bytes);
    let stem = format!("pytorch_model-00001-of-{:05}", sharded.len() - 2);
    assert_eq!(names[0], format!("{stem}/version"));
    assert_eq!(names[1], format!("{stem}/data.pkl"));
    let storages: Vec<&str> = names[2..]
        .iter()
        .map(|n| n.rsplit('/').next().unwrap())
        .collect();
    let mut as_strings = storages.clone();
    as_strings.sort_unstable();
    assert_eq!(storages, as_strings);
    assert!(TorchFile::parse(&bytes).is_ok());
    assert_eq!(
        shard.facts().sha256,
        neuromfa_hub::hashing::hex(&Sha256::digest(&bytes))
    );
}

#[test]
fn large_archives_are_zip64_throughout() {
    let mut d = description(vec![0]);
    d.formats.zip64_above_bytes = 1_000_000;
    let hub = VirtualHub::new(&d, None).unwrap();
    let model = &hub.inner.models[0];
    let files = hub.plan_files(
        model,
        "step0",
        Plan {
            content_step: 0,
            format: Format::Bin,
        },
    );
    let bytes = files[1].1.read(0, files[1].1.size());
    check_archive(&bytes);
    let central = central_entries(&bytes);
    let first = central.first().unwrap();
    // Sizes and offsets marked, the ZIP64 end record and locator before the end record.
    let at = bytes
        .windows(4)
        .rposition(|w| w == 0x0605_4B50u32.to_le_bytes())
        .unwrap();
    assert_eq!(&bytes[at + 8..at + 10], &[0xFF, 0xFF]);
    assert_eq!(&bytes[at - 20..at - 16], &0x0706_4B50u32.to_le_bytes());
    assert_eq!(first.0, "pytorch_model/data.pkl");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), &bytes).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        files[0].1.read(0, files[0].1.size()),
    )
    .unwrap();
    assert!(Checkpoint::open(dir.path()).is_ok());
}

#[test]
fn duplicate_steps_serve_identical_files_and_others_do_not() {
    let mut d = description(vec![0, 1, 2, 1000]);
    d.models[0].duplicates = vec![DuplicateGroup {
        content_step: 500,
        steps: vec![0, 2],
        format: Some(Format::Bin),
    }];
    let hub = VirtualHub::new(&d, None).unwrap();
    let weights = |rev: &str| {
        let view = hub.describe("test", "p14", rev).unwrap();
        let f = view
            .files
            .iter()
            .find(|f| f.path != "config.json")
            .unwrap()
            .clone();
        (view.commit, f.path, f.sha256)
    };
    let (c0, p0, s0) = weights("step0");
    let (c2, p2, s2) = weights("step2");
    assert_eq!((&p0, &s0), (&p2, &s2));
    assert_eq!(p0, "pytorch_model.bin");
    assert_ne!(c0, c2, "commits differ between revisions");
    assert_ne!(weights("step1").2, s0);
    assert_eq!(weights("main").2, weights("step1000").2);
    // A revision can be addressed by its commit.
    let view = hub.describe("test", "p14", &c2).unwrap();
    assert_eq!(view.revision, "step2");
    assert!(matches!(
        hub.describe("test", "p14", "step3"),
        Err(HubError::RevisionNotFound(_))
    ));
    assert!(matches!(
        hub.describe("test", "nope", "main"),
        Err(HubError::RepoNotFound(_))
    ));
}

#[test]
fn content_hashes_are_kept_and_precomputed_once() {
    let dir = tempfile::tempdir().unwrap();
    let facts = dir.path().join("facts.jsonl");
    let d = description(vec![0, 1000]);
    let hub = VirtualHub::new(&d, Some(&facts)).unwrap();
    let first = hub.precompute(|_, _| {});
    // config.json is shared; each step has its weights (one, or shards and an index).
    assert!(first.files >= 3, "{first:?}");
    assert_eq!(first.computed, first.files);
    let sha = hub.describe("test", "p14", "step1000").unwrap().files[1]
        .sha256
        .clone();

    let again = VirtualHub::new(&d, Some(&facts)).unwrap();
    let second = again.precompute(|_, _| {});
    assert_eq!((second.files, second.computed), (first.files, 0));
    let view = again.describe("test", "p14", "step1000").unwrap();
    assert_eq!(view.files[1].sha256, sha);
    let f = &view.files[1];
    let Content::Virtual(file) = &f.content else {
        panic!("a virtual file");
    };
    assert_eq!(
        hex(&Sha256::digest(file.read(0, f.size))),
        sha,
        "the kept hash is the bytes'"
    );
}
