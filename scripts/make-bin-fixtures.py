#!/usr/bin/env python3
"""Writes PyTorch `.bin` twins of the golden tiny GPT-NeoX checkpoints, without torch.

    python3 scripts/make-bin-fixtures.py [--golden tests/data/golden/tiny-neox] [--out tests/data/bin]
    python3 scripts/make-bin-fixtures.py --convert SRC OUT

With `--convert` it writes any safetensors checkpoint SRC (`config.json`, `model.safetensors`)
as a torch-style OUT/pytorch_model.bin, one storage per tensor, streaming the tensors' bytes
(for benchmarks at real scale: `scripts/bench-fetch.sh` converts a pythia-1b-shaped
checkpoint).

The archives are laid out as torch.save writes them (PyTorchStreamWriter over miniz): every
record under one folder named after the file's stem, stored uncompressed, general-purpose
flags 0x0808 with sizes in a data descriptor after the data, data aligned to 64 bytes by an
`FB` extra field padded with `Z`, DOS time and date 0. `data.pkl` is a protocol-2 pickle
whose storages are `persistent_id` tuples `('storage', torch.<T>Storage, key, 'cpu', numel)`
and whose tensors are `torch._utils._rebuild_tensor_v2(...)`; the globals are stand-ins
registered under torch's module names, so nothing of torch is needed. Output is
deterministic: running the script again writes the same bytes.

Written (each directory a checkpoint `analyze` reads):
  single/step1000    pytorch_model.bin as torch >= 2.5 writes it (data.pkl, .format_version,
                     .storage_alignment, byteorder, data/<key> in string order, version,
                     .data/serialization_id); an OrderedDict state dict with _metadata;
                     block 1's QKV weight shares a storage with its bias, at an offset;
                     block 2's attention dense and MLP-up weights share one storage;
                     block 3's MLP-down weight is a transposed view (strides (1, 64));
                     embed_out.weight pickled as a Parameter; masks (BoolStorage) and
                     float buffers like Pythia's, which readers must skip.
  sharded/step0      pytorch_model-0000{1,2,3}-of-00003.bin + pytorch_model.bin.index.json,
                     as torch 1.x wrote them for transformers (version first, no byteorder,
                     plain dict shards); the third shard forced to ZIP64 throughout (ZIP64
                     local and central extra fields, sizes and offsets marked 0xFFFFFFFF,
                     ZIP64 end record and locator), as files over 4 GiB are.
  bad/<case>/step0   one broken archive each, holding block 0's QKV weight: deflated,
                     encrypted, unknown-global, wrong-dtype, missing-storage,
                     outside-storage, big-endian, legacy (a pre-1.6 pickle file).

Every archive written is read back with Python's zipfile (CRC checks) and, but for the bad
ones, unpickled again to check that each tensor's elements equal the safetensors twin's.
"""

import argparse
import collections
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import sys
import types
import zipfile
import zlib

ALIGNMENT = 64
FLAGS = 0x0808  # data descriptor follows the data; UTF-8 names
ZIP64_MARK = 0xFFFFFFFF
ELEMENT_SIZE = {"F16": 2, "BF16": 2, "F32": 4, "BOOL": 1, "I64": 8}
STORAGE_OF = {"F16": "HalfStorage", "BF16": "BFloat16Storage", "F32": "FloatStorage",
              "BOOL": "BoolStorage", "I64": "LongStorage"}


# --- torch's pickled names, as stand-ins -------------------------------------------------

def install_torch_stand_ins():
    """Registers modules `torch` and `torch._utils` holding stand-ins for the globals a
    state dict's pickle names, so that pickle writes them as torch would. Called when
    writing, not on import: a script with the real torch may import this one."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    sys.modules.update({"torch": torch, "torch._utils": utils})
    torch._utils = utils
    for name in ("_rebuild_tensor_v2", "_rebuild_parameter"):
        def stand_in(*args):
            raise RuntimeError("a stand-in for torch, never called")
        stand_in.__module__, stand_in.__name__, stand_in.__qualname__ = utils.__name__, name, name
        setattr(utils, name, stand_in)
    for storage_name in STORAGE_OF.values():
        setattr(torch, storage_name, type(storage_name, (), {"__module__": "torch"}))


def torch_global(module, name):
    return getattr(sys.modules[module], name)


class Storage:
    """A storage: its key in the archive, its type, and its bytes (or, for a conversion,
    where they are: `source` = (path, offset, length), read in chunks when written)."""

    def __init__(self, key, dtype, data, source=None):
        self.key, self.dtype, self.data, self.source = key, dtype, data, source
        length = len(data) if source is None else source[2]
        self.numel = length // ELEMENT_SIZE[dtype]

    def chunks(self, size=16 << 20):
        path, offset, length = self.source
        with open(path, "rb") as f:
            f.seek(offset)
            while length > 0:
                chunk = f.read(min(size, length))
                assert chunk, f"{path} ends early"
                length -= len(chunk)
                yield chunk


class Tensor:
    """A view of a storage, pickled as torch pickles a tensor."""

    def __init__(self, storage, offset, shape, strides, parameter=False):
        self.storage, self.offset = storage, offset
        self.shape, self.strides, self.parameter = tuple(shape), tuple(strides), parameter

    def __reduce_ex__(self, protocol):
        rebuild = (torch_global("torch._utils", "_rebuild_tensor_v2"), (self.storage, self.offset, self.shape, self.strides,
                                       False, collections.OrderedDict()))
        if not self.parameter:
            return rebuild
        data = Tensor(self.storage, self.offset, self.shape, self.strides)
        return (torch_global("torch._utils", "_rebuild_parameter"),
                (data, True, collections.OrderedDict()))


class StatePickler(pickle.Pickler):
    """torch.save's pickler: storages become persistent ids."""

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            storage_type = torch_global("torch", STORAGE_OF[obj.dtype])
            return ("storage", storage_type, obj.key, "cpu", obj.numel)
        return None


def pickle_state(state):
    buffer = io.BytesIO()
    StatePickler(buffer, protocol=2).dump(state)
    return buffer.getvalue()


# --- the zip container, as PyTorchStreamWriter and miniz write it ------------------------

class TorchZipWriter:
    """Writes to `out` (a binary stream; in memory by default), record by record."""

    def __init__(self, prefix, zip64=False, out=None):
        self.prefix, self.zip64 = prefix, zip64
        self.out = out if out is not None else io.BytesIO()
        self.entries = []

    def record(self, name, data, method=0, flags=FLAGS):
        if isinstance(data, str):
            data = data.encode()
        stored = data
        if method == 8:
            compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
            stored = compressor.compress(data) + compressor.flush()
        self.record_stream(name, len(data), len(stored), [stored], zlib.crc32(data), method, flags)

    def record_stream(self, name, size, stored_len, chunks, crc=None, method=0, flags=FLAGS):
        """A record whose stored bytes come in `chunks` (`stored_len` bytes, `size`
        unpacked); the CRC is computed on the way when not given (stored records only)."""
        name = f"{self.prefix}/{name}".encode()
        offset = self.out.tell()
        zip64_extra = b""
        if self.zip64:
            zip64_extra = struct.pack("<HHQQQ", 1, 24, size, stored_len, offset)
        # getPadding: data starts at the next multiple of 64 after header, name and extras.
        start = offset + 30 + len(name) + len(zip64_extra) + 4
        padding = -start % ALIGNMENT
        extra = zip64_extra + b"FB" + struct.pack("<H", padding) + b"Z" * padding
        version = 45 if self.zip64 else 0
        self.out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, version, flags, method, 0, 0,
                                   0, 0, 0, len(name), len(extra)))
        self.out.write(name + extra)
        running, written = 0, 0
        for chunk in chunks:
            self.out.write(chunk)
            running = zlib.crc32(chunk, running)
            written += len(chunk)
        assert written == stored_len, (name, written, stored_len)
        crc = running if crc is None else crc
        if self.zip64:
            self.out.write(struct.pack("<IIQQ", 0x08074B50, crc, stored_len, size))
        else:
            self.out.write(struct.pack("<IIII", 0x08074B50, crc, stored_len, size))
        self.entries.append((name, offset, crc, stored_len, size, method, flags))

    def finish(self):
        directory = bytearray()
        for name, offset, crc, stored_len, size, method, flags in self.entries:
            extra, fields = b"", (stored_len, size, offset)
            version = 0
            if self.zip64:
                extra = struct.pack("<HHQQQ", 1, 24, size, stored_len, offset)
                fields, version = (ZIP64_MARK,) * 3, 45
            directory += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, version, version,
                                     flags, method, 0, 0, crc, fields[0], fields[1],
                                     len(name), len(extra), 0, 0, 0, 0, fields[2])
            directory += name + extra
        directory_at = self.out.tell()
        self.out.write(directory)
        count = len(self.entries)
        if self.zip64:
            record_at = self.out.tell()
            self.out.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count,
                                       count, len(directory), directory_at))
            self.out.write(struct.pack("<IIQI", 0x07064B50, 0, record_at, 1))
            self.out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF,
                                       ZIP64_MARK, ZIP64_MARK, 0))
        else:
            self.out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count,
                                       len(directory), directory_at, 0))
        return self.out.getvalue() if isinstance(self.out, io.BytesIO) else None


def serialization_id(records):
    """A deterministic stand-in for torch's id (record-name hash and CRC, 40 digits)."""
    digest = hashlib.sha256("".join(sorted(records)).encode()).digest()
    return str(int.from_bytes(digest[:16], "little"))[:40].rjust(40, "0")


def torch_save(state, storages, prefix, modern=True, zip64=False, tamper=None, out=None):
    """The bytes torch.save(state) writes (into `out` instead when given). `tamper(name,
    data)` may return (data, method, flags) to damage one record."""
    writer = TorchZipWriter(prefix, zip64, out)
    tamper = tamper or (lambda name, data: (data, 0, FLAGS))
    names = []

    def record(name, data):
        names.append(name)
        writer.record(name, *tamper(name, data))

    if not modern:
        record("version", "3\n")
    record("data.pkl", pickle_state(state))
    if modern:
        record(".format_version", "1")
        record(".storage_alignment", "64")
        record("byteorder", "little")
    for key in sorted(storages):  # torch sorts keys as strings: 0, 1, 10, 11, …, 2
        storage = storages[key]
        if storage.source is None:
            record(f"data/{key}", storage.data)
        else:
            names.append(f"data/{key}")
            length = storage.source[2]
            writer.record_stream(f"data/{key}", length, length, storage.chunks())
    if modern:
        record("version", "3\n")
        record(".data/serialization_id", serialization_id(names))
    return writer.finish()


# --- the golden checkpoints ----------------------------------------------------------------

def read_safetensors(path):
    """name -> (dtype, shape, bytes), in file order."""
    with open(path, "rb") as f:
        blob = f.read()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + header_len])
    header.pop("__metadata__", None)
    body = blob[8 + header_len:]
    ordered = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    return collections.OrderedDict(
        (name, (info["dtype"], info["shape"], body[info["data_offsets"][0]:info["data_offsets"][1]]))
        for name, info in ordered)


def contiguous_strides(shape):
    strides, step = [], 1
    for n in reversed(shape):
        strides.insert(0, step)
        step *= n
    return strides


def transposed_bytes(data, rows, cols, size):
    """The bytes of the [cols, rows] transpose of a row-major [rows, cols] matrix."""
    out = bytearray(len(data))
    for r in range(rows):
        for c in range(cols):
            src, dst = (r * cols + c) * size, (c * rows + r) * size
            out[dst:dst + size] = data[src:src + size]
    return bytes(out)


class StateBuilder:
    """Storages keyed as torch keys them: in order of first pickling."""

    def __init__(self):
        self.storages = {}

    def storage(self, dtype, data):
        storage = Storage(str(len(self.storages)), dtype, data)
        self.storages[storage.key] = storage
        return storage

    def own(self, dtype, shape, data, parameter=False):
        return Tensor(self.storage(dtype, data), 0, shape, contiguous_strides(shape), parameter)


def pythia_buffers(builder, state, block):
    """What Pythia's .bin files hold besides weights: a causal mask, a masked-fill value
    and rotary frequencies (absent from safetensors twins)."""
    prefix = f"gpt_neox.layers.{block}.attention"
    mask = bytes(1 if c <= r else 0 for r in range(16) for c in range(16))
    state[f"{prefix}.bias"] = builder.own("BOOL", [1, 1, 16, 16], mask)
    state[f"{prefix}.masked_bias"] = builder.own("F32", [], struct.pack("<f", -1e9))
    inv_freq = b"".join(struct.pack("<f", 10000 ** (-i / 8)) for i in range(0, 8, 2))
    state[f"{prefix}.rotary_emb.inv_freq"] = builder.own("F32", [4], inv_freq)


def single_views(golden):
    """The state dict of `single/`: shared storages, offsets, a transposed view."""
    builder, state = StateBuilder(), collections.OrderedDict()
    qkv_weight, qkv_bias = (f"gpt_neox.layers.1.attention.query_key_value.{p}" for p in ("weight", "bias"))
    dense, up = "gpt_neox.layers.2.attention.dense.weight", "gpt_neox.layers.2.mlp.dense_h_to_4h.weight"
    down = "gpt_neox.layers.3.mlp.dense_4h_to_h.weight"
    views = {}  # tensors made together with one that shares their storage
    for name, (dtype, shape, data) in golden.items():
        if name in views:
            state[name] = views.pop(name)
        elif name in (qkv_weight, qkv_bias):
            # One storage, the bias first: the weight starts at an offset.
            (_, bias_shape, bias), (_, weight_shape, weight) = golden[qkv_bias], golden[qkv_weight]
            storage = builder.storage(dtype, bias + weight)
            views[qkv_bias] = Tensor(storage, 0, bias_shape, [1])
            views[qkv_weight] = Tensor(storage, bias_shape[0], weight_shape,
                                       contiguous_strides(weight_shape))
            state[name] = views.pop(name)
        elif name in (dense, up):
            (_, dense_shape, dense_data), (_, up_shape, up_data) = golden[dense], golden[up]
            storage = builder.storage(dtype, dense_data + up_data)
            views[dense] = Tensor(storage, 0, dense_shape, contiguous_strides(dense_shape))
            views[up] = Tensor(storage, dense_shape[0] * dense_shape[1], up_shape,
                               contiguous_strides(up_shape))
            state[name] = views.pop(name)
        elif name == down:
            # The storage holds the transpose; the tensor views it with strides (1, rows).
            rows, cols = shape
            storage = builder.storage(dtype, transposed_bytes(data, rows, cols, 2))
            state[name] = Tensor(storage, 0, shape, [1, rows])
        else:
            state[name] = builder.own(dtype, shape, data, parameter=name == "embed_out.weight")
        if name.endswith("post_attention_layernorm.weight"):
            pythia_buffers(builder, state, int(name.split(".")[2]))
    assert not views, views
    # Like nn.Module.state_dict(): an OrderedDict whose _metadata is pickled by BUILD.
    state._metadata = collections.OrderedDict([("", {"version": 1})])
    return state, builder.storages


def shard_groups(golden, count):
    """Tensors in file order, split where the running size passes each 1/count."""
    total = sum(len(d) for _, _, d in golden.values())
    groups, size = [[] for _ in range(count)], 0
    for name, (_, _, data) in golden.items():
        groups[min(count - 1, size * count // total)].append(name)
        size += len(data)
    return groups


# --- checks ----------------------------------------------------------------------------------

class StateUnpickler(pickle.Unpickler):
    def __init__(self, data, storages):
        super().__init__(io.BytesIO(data))
        self.storages = storages

    def find_class(self, module, name):
        allowed = {("torch._utils", "_rebuild_tensor_v2"): self.rebuild,
                   ("torch._utils", "_rebuild_parameter"): lambda t, grad, hooks: t,
                   ("collections", "OrderedDict"): collections.OrderedDict}
        if (module, name) in allowed:
            return allowed[(module, name)]
        if module == "torch" and name in STORAGE_OF.values():
            return name
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid):
        tag, storage_type, key, _location, numel = pid
        assert tag == "storage"
        return (storage_type, self.storages[key], numel)

    @staticmethod
    def rebuild(storage, offset, shape, strides, *_):
        storage_type, data, numel = storage
        size = {v: ELEMENT_SIZE[k] for k, v in STORAGE_OF.items()}[storage_type]
        assert len(data) == numel * size
        out = bytearray()
        for index in _indices(shape):
            at = (offset + sum(i * s for i, s in zip(index, strides))) * size
            out += data[at:at + size]
        return bytes(out)


def _indices(shape):
    if not shape:
        yield ()
        return
    for i in range(shape[0]):
        for rest in _indices(shape[1:]):
            yield (i,) + rest


def check_archive(path, golden):
    """Reads `path` back with zipfile and checks every golden tensor in it."""
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None, f"{path}: CRC mismatch"
        names = archive.namelist()
        prefix = next(n for n in names if n.endswith("/data.pkl")).split("/")[0]
        storages = {n[len(prefix) + 6:]: archive.read(n) for n in names
                    if n.startswith(f"{prefix}/data/")}
        for info in archive.infolist():
            header = archive.fp
            header.seek(info.header_offset)
            fixed = header.read(30)
            name_len, extra_len = struct.unpack("<HH", fixed[26:30])
            assert (info.header_offset + 30 + name_len + extra_len) % ALIGNMENT == 0, info.filename
        state = StateUnpickler(archive.read(f"{prefix}/data.pkl"), storages).load()
    checked = 0
    for name, value in state.items():
        if name in golden:
            assert value == golden[name][2], f"{path}: {name} differs from the twin"
            checked += 1
    return checked


# --- writing ---------------------------------------------------------------------------------

def write_checkpoint(directory, golden_dir, files):
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    shutil.copyfile(os.path.join(golden_dir, "config.json"), os.path.join(directory, "config.json"))
    for name, data in files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


def write_single(golden_root, out):
    golden_dir = os.path.join(golden_root, "step1000")
    golden = read_safetensors(os.path.join(golden_dir, "model.safetensors"))
    state, storages = single_views(golden)
    directory = os.path.join(out, "single", "step1000")
    write_checkpoint(directory, golden_dir,
                     {"pytorch_model.bin": torch_save(state, storages, "pytorch_model")})
    checked = check_archive(os.path.join(directory, "pytorch_model.bin"), golden)
    assert checked == len(golden), (checked, len(golden))


def write_sharded(golden_root, out):
    golden_dir = os.path.join(golden_root, "step0")
    golden = read_safetensors(os.path.join(golden_dir, "model.safetensors"))
    groups = shard_groups(golden, 3)
    files, weight_map = {}, {}
    for i, names in enumerate(groups):
        stem = f"pytorch_model-{i + 1:05d}-of-{len(groups):05d}"
        builder = StateBuilder()
        state = {n: builder.own(*golden[n]) for n in names}  # transformers' shards: plain dicts
        files[f"{stem}.bin"] = torch_save(state, builder.storages, stem, modern=False,
                                          zip64=i == len(groups) - 1)
        weight_map.update({n: f"{stem}.bin" for n in names})
    total = sum(len(d) for _, _, d in golden.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    files["pytorch_model.bin.index.json"] = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()
    directory = os.path.join(out, "sharded", "step0")
    write_checkpoint(directory, golden_dir, files)
    checked = sum(check_archive(os.path.join(directory, f), golden)
                  for f in files if f.endswith(".bin"))
    assert checked == len(golden), (checked, len(golden))


QKV = "gpt_neox.layers.0.attention.query_key_value.weight"


def bad_archive(case):
    """One broken archive holding block 0's QKV weight ([192, 64], zeros)."""
    shape, numel = [192, 64], 192 * 64
    builder, state = StateBuilder(), {}
    tamper, modern = None, True
    if case == "wrong-dtype":
        state[QKV] = builder.own("I64", shape, bytes(numel * 8))
    elif case == "missing-storage":
        state[QKV] = Tensor(Storage("7", "F16", bytes(numel * 2)), 0, shape, [64, 1])
    elif case == "outside-storage":
        state[QKV] = Tensor(builder.storage("F16", bytes(numel * 2)), 64, shape, [64, 1])
    elif case == "unknown-global":
        state[QKV] = builder.own("F16", shape, bytes(numel * 2))
        state["note"] = UnknownGlobal()
    else:
        state[QKV] = builder.own("F16", shape, bytes(numel * 2))
    if case == "deflated":
        tamper = lambda name, data: (data, 8 if name.startswith("data/") else 0, FLAGS)
    elif case == "encrypted":
        tamper = lambda name, data: (data, 0, FLAGS | (1 if name.startswith("data/") else 0))
    elif case == "big-endian":
        tamper = lambda name, data: ((b"big" if name == "byteorder" else data), 0, FLAGS)
    if case == "legacy":
        # torch.save(..., _use_new_zipfile_serialization=False): pickles, then raw storages.
        legacy = io.BytesIO()
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, legacy, protocol=2)
        return legacy.getvalue() + pickle_state(state)
    return torch_save(state, builder.storages, "pytorch_model", modern=modern, tamper=tamper)


class UnknownGlobal:
    """An object whose pickle calls `builtins.eval`, which no state dict holds."""

    def __reduce__(self):
        return (eval, ("0",))


BAD_CASES = ["deflated", "encrypted", "unknown-global", "wrong-dtype", "missing-storage",
             "outside-storage", "big-endian", "legacy"]


def write_bad(golden_root, out):
    golden_dir = os.path.join(golden_root, "step0")
    shutil.rmtree(os.path.join(out, "bad"), ignore_errors=True)
    for case in BAD_CASES:
        directory = os.path.join(out, "bad", case, "step0")
        write_checkpoint(directory, golden_dir, {"pytorch_model.bin": bad_archive(case)})


def read_safetensors_header(path):
    """name -> (dtype, shape, absolute offset, length), in file order, reading the header
    only."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    ordered = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    return collections.OrderedDict(
        (name, (info["dtype"], info["shape"], 8 + header_len + info["data_offsets"][0],
                info["data_offsets"][1] - info["data_offsets"][0]))
        for name, info in ordered)


def convert(source, out):
    """Writes `source`'s model.safetensors as `out`/pytorch_model.bin, as torch.save writes
    a state dict (one storage per tensor, in file order), streaming the tensors' bytes: a
    multi-gigabyte checkpoint is never held in memory. config.json is copied."""
    path = os.path.join(source, "model.safetensors")
    builder, state = StateBuilder(), collections.OrderedDict()
    for name, (dtype, shape, offset, length) in read_safetensors_header(path).items():
        storage = Storage(str(len(builder.storages)), dtype, None, source=(path, offset, length))
        builder.storages[storage.key] = storage
        state[name] = Tensor(storage, 0, shape, contiguous_strides(shape))
    state._metadata = collections.OrderedDict([("", {"version": 1})])
    os.makedirs(out, exist_ok=True)
    shutil.copyfile(os.path.join(source, "config.json"), os.path.join(out, "config.json"))
    # torch writes ZIP64 records once offsets or sizes no longer fit 32 bits.
    zip64 = os.path.getsize(path) > 0xFFFF0000
    target = os.path.join(out, "pytorch_model.bin")
    with open(target + ".partial", "wb") as f:
        torch_save(state, builder.storages, "pytorch_model", zip64=zip64, out=f)
    os.replace(target + ".partial", target)
    return target


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--golden", default=os.path.join(root, "tests/data/golden/tiny-neox"))
    parser.add_argument("--out", default=os.path.join(root, "tests/data/bin"))
    parser.add_argument("--convert", nargs=2, metavar=("SRC", "OUT"),
                        help="write SRC/model.safetensors as OUT/pytorch_model.bin (streaming) "
                             "instead of writing the fixtures")
    args = parser.parse_args()
    install_torch_stand_ins()
    if args.convert:
        print(f"wrote {convert(*args.convert)}")
        return
    write_single(args.golden, args.out)
    write_sharded(args.golden, args.out)
    write_bad(args.golden, args.out)
    print(f"wrote and checked {args.out}")


if __name__ == "__main__":
    main()
