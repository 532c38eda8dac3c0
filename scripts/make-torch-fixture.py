#!/usr/bin/env python3
"""Writes tests/data/bin/torch-save/step2000 with torch.save itself, and checks that torch
reads the fixtures scripts/make-bin-fixtures.py writes without torch.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch
    /tmp/torchvenv/bin/python scripts/make-torch-fixture.py

Needs torch (any build; no GPU is used). The checkpoint holds the golden step2000's sixteen
weight matrices the network is made of, f16, as an OrderedDict written by torch.save: the
archive as it really is, next to the stand-in writer's. Tests never run this script; they
read what it wrote (committed), which records the torch version in `torch_version.txt`.
"""

import collections
import importlib.util
import os
import shutil

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests/data/golden/tiny-neox")
BIN = os.path.join(ROOT, "tests/data/bin")
MATRICES = ("attention.query_key_value.weight", "attention.dense.weight",
            "mlp.dense_h_to_4h.weight", "mlp.dense_4h_to_h.weight")


def read_safetensors(path):
    """name -> (shape, bytes), by the reader of the fixtures written without torch."""
    spec = importlib.util.spec_from_file_location(
        "make_bin_fixtures", os.path.join(ROOT, "scripts/make-bin-fixtures.py"))
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    return {name: (shape, data)
            for name, (_, shape, data) in fixtures.read_safetensors(path).items()}


def as_tensor(shape, data):
    return torch.frombuffer(bytearray(data), dtype=torch.float16).reshape(shape).clone()


def write_real_fixture():
    golden_dir = os.path.join(GOLDEN, "step2000")
    golden = read_safetensors(os.path.join(golden_dir, "model.safetensors"))
    state = collections.OrderedDict(
        (f"gpt_neox.layers.{b}.{m}", as_tensor(*golden[f"gpt_neox.layers.{b}.{m}"]))
        for b in range(4) for m in MATRICES)
    out = os.path.join(BIN, "torch-save", "step2000")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    shutil.copyfile(os.path.join(golden_dir, "config.json"), os.path.join(out, "config.json"))
    torch.save(state, os.path.join(out, "pytorch_model.bin"))
    with open(os.path.join(out, "torch_version.txt"), "w") as f:
        f.write(torch.__version__ + "\n")
    check(["torch-save/step2000/pytorch_model.bin"], golden, expected=len(state))


def check(files, golden, expected):
    """torch.load (weights only) gives every golden tensor in `files` unchanged."""
    seen = 0
    for name in files:
        state = torch.load(os.path.join(BIN, name), weights_only=True)
        for key, tensor in state.items():
            if key in golden:
                shape, data = golden[key]
                assert list(tensor.shape) == shape, key
                assert tensor.detach().contiguous().numpy().tobytes() == data, key
                seen += 1
    assert seen == expected, (files, seen, expected)


def main():
    write_real_fixture()
    single = read_safetensors(os.path.join(GOLDEN, "step1000", "model.safetensors"))
    check(["single/step1000/pytorch_model.bin"], single, expected=len(single))
    sharded = read_safetensors(os.path.join(GOLDEN, "step0", "model.safetensors"))
    shards = [f"sharded/step0/pytorch_model-0000{i}-of-00003.bin" for i in (1, 2, 3)]
    check(shards, sharded, expected=len(sharded))
    print(f"torch {torch.__version__} wrote torch-save/ and reads single/ and sharded/")


if __name__ == "__main__":
    main()
