"""Bad input, fuzzed (issue 16, item 4): seeded random corruption of a split's manifest and shards.

The generator
-------------
Every case damages the ``train`` split of a private copy of the ``polymnist_shards`` fixture (6
shards of 10 samples; members ``labels.npy`` (int64 class index), ``m0.npy``..``m2.npy`` (uint8
3x28x28) per sample). ``CASE_COUNTS`` fixes how many cases each kind of damage gets (60 in all);
case ``i`` of kind ``k`` draws everything it picks (field, offset, mask, shard, member, value) from
its own ``random.Random(f"{FUZZ_SEED}/{k}/{i}")``, so a case does not depend on which others run
or in what order. ``FUZZ_SEED`` is fixed (the suite is reproducible); ``MMPLATFORM_FUZZ_SEED=N``
draws another set of cases. Failure messages carry the seed, the case and the damage it did.

``manifest.json``:
  flip (one byte XOR a random non-zero mask at a random offset), truncate (at a random offset),
  wrong_type (a typed field replaced by a JSON value of another type), missing (a required field
  removed), renamed_key (one letter of a key of the manifest's own changed), wrong_count
  (``num_samples``, ``samples_per_shard``, a shard's ``num_samples``, ``size`` or ``sha256``, or all
  counts changed consistently so that only reading the shards can tell), wrong_spec (a modality's
  dtype, shape, kind, likelihood or name, or the label kind).
a shard ``.tar`` (a random one of the 6):
  truncate (at a random offset; the manifest untouched), truncate_resized (the same with the
  manifest's size and sha256 rewritten to match, so the tar reader itself must notice),
  flip_header / flip_payload / flip_anywhere (one byte XOR a random mask in a random member's tar
  header, in its payload: npy header, array bytes or padding, or anywhere in the file: also the
  end-of-archive blocks and record padding), label_out_of_range (a label's high byte flipped),
  and, with the tar rewritten and the manifest's size and sha256 rewritten to match:
  member_removed, member_duplicated, sample_removed, sample_added, member_wrong_array (a member
  holding an array of another dtype or shape).

The oracle
----------
Each case reads the damaged split three ways, each under a timeout (a hang fails the case):
``EvalReader`` over all batches, ``TrainReader`` over one epoch (its shuffle buffer draws every
shard: ``test_the_train_reading_draws_every_shard``) and ``SplitSource(verify="sha256")`` over
every shard. Each reading must either raise ``ManifestError`` or ``ShardError`` whose message names
the damaged file (``manifest.json``, or the shard's name; a manifest that loads but disagrees with
the shards may be reported at any shard it describes) and what in it is wrong (``WHAT``: a field,
a member, a tar header, the size, the sample count, the sha256; the line and column of unparsable
JSON), or yield exactly the keys, arrays and labels of the pristine split. Never silently accepted:

- a damaged manifest that still loads may differ from the original only in descriptive values
  no reader uses (``DESCRIPTIVE``: dataset, version, split, label names, builder, source, seed,
  dropped_samples, a shard's sha256); any other difference must fail every reading;
- wrong_type, missing and renamed_key cases must raise a ManifestError naming that field;
- whenever a shard's bytes differ from the sha256 its (loadable) manifest records, the
  ``verify="sha256"`` reading raises, naming that shard.

Documented limitation (not a bug): readers check shard sizes at open by default (``verify="size"``,
cheap); per sample they check each member's npy header, shape and dtype, and that a label is a
class (or 0/1 attribute) the manifest names. A same-size change inside an image's array bytes, or
inside a label that stays a valid class, is therefore read as changed values under the default
verification: only ``verify="sha256"`` catches it (asserted for every such case). The flip cases
allow changed values only for a byte inside an array's data; anywhere else (tar headers, npy
headers, padding, end-of-archive) the values must be the pristine ones or reading must fail.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipelines.manifest import ManifestError
from data_pipelines.readers import EvalReader, TrainReader
from data_pipelines.shard_source import ShardError, SplitSource
from data_pipelines.shards import encode_npy

FUZZ_SEED = int(os.environ.get("MMPLATFORM_FUZZ_SEED", "16004"))
SPLIT = "train"
READ_TIMEOUT_S = 60.0

CASE_COUNTS = {
    "manifest_flip": 8,
    "manifest_truncate": 3,
    "manifest_wrong_type": 6,
    "manifest_missing": 4,
    "manifest_renamed_key": 4,
    "manifest_wrong_count": 5,
    "manifest_wrong_spec": 5,
    "shard_truncate": 2,
    "shard_truncate_resized": 4,
    "shard_flip_header": 3,
    "shard_flip_payload": 4,
    "shard_flip_anywhere": 3,
    "shard_label_out_of_range": 1,
    "shard_member_removed": 2,
    "shard_member_duplicated": 1,
    "shard_sample_removed": 1,
    "shard_sample_added": 1,
    "shard_member_wrong_array": 3,
}
CASES = [f"{kind}-{index}" for kind, count in CASE_COUNTS.items() for index in range(count)]

DESCRIPTIVE = re.compile(
    r"^(dataset|version|split|seed|dropped_samples|label_names\[\d+\]|shards\[\d+\]\.sha256"
    r"|builder|builder[.\[].*|source|source[.\[].*)$"
)
"""Manifest values no reader uses: a change to one of these alone may load silently."""

WHAT = re.compile(
    r"field ('[^']+'|\"[^\"]+\")|not readable JSON: .*(line \d+ column \d+|position \d+)|member \S+|tar header"
    r"|\d+ bytes, the manifest says \d+|holds \d+ samples, the manifest says \d+|sha256 differs"
    r"|: missing \(listed in"
)
"""What an error must say is wrong, besides naming the file."""

MANIFEST_FIELD_TYPES = {
    "format_version": int, "dataset": str, "version": str, "split": str, "modalities": list,
    "label_kind": str, "label_names": list, "num_samples": int, "samples_per_shard": int,
    "dropped_samples": int, "shards": list, "builder": dict, "source": dict, "seed": int, "restricted": bool,
}
MODALITY_FIELD_TYPES = {"name": str, "kind": str, "shape": list, "dtype": str, "likelihood": str, "vocabulary": list}
SHARD_FIELD_TYPES = {"name": str, "num_samples": int, "size": int, "sha256": str}
REQUIRED_TOP = ("format_version", "dataset", "version", "split", "modalities", "label_kind", "label_names",
                "num_samples", "samples_per_shard", "shards")
REQUIRED_MODALITY = ("name", "kind", "shape", "dtype", "likelihood")
JSON_VALUES = (7, 2.5, "7", True, None, [], {}, [1, 2])


# ---------------------------------------------------------------- reading


@dataclass
class Reading:
    error: BaseException | None = None
    values: list | None = None


def _batches(reader) -> list:
    return [(list(b.keys), {m: t.clone() for m, t in b.inputs.items()}, b.labels.clone()) for b in reader]


def _read_eval(split: Path) -> list:
    return _batches(EvalReader(split, batch_size=7, rank=0, world_size=1))


def _read_train(split: Path) -> list:
    # One epoch: the shuffle buffer (1000) fills from ~100 resampled shards before the first batch.
    return _batches(TrainReader(split, batch_size=4, steps_per_epoch=2, seed=0, rank=0, world_size=1))


def _read_sha256(split: Path) -> list:
    source = SplitSource(split, verify="sha256")
    return [(s.key, {m: a.copy() for m, a in s.arrays.items()}, s.label.copy())
            for shard in source.shards for s in source.read_shard(shard)]


READINGS = {"eval": _read_eval, "train": _read_train, "sha256": _read_sha256}


def _run_with_timeout(read, split: Path) -> Reading:
    """Run ``read`` in a thread; a reading that does not end within the timeout fails the case."""
    outcome = Reading()

    def target():
        try:
            outcome.values = read(split)
        except BaseException as error:  # noqa: BLE001 -- judged by the oracle
            outcome.error = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(READ_TIMEOUT_S)
    if thread.is_alive():
        raise AssertionError(f"reading {split} did not end within {READ_TIMEOUT_S:.0f} s (hang)")
    return outcome


def _equal(a, b) -> bool:
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    return a == b


@pytest.fixture(scope="module")
def pristine(polymnist_shards) -> dict:
    """What the three readings give on the undamaged split, and its manifest as JSON."""
    split = polymnist_shards / SPLIT
    return {
        "readings": {name: read(split) for name, read in READINGS.items()},
        "manifest": json.loads((split / "manifest.json").read_text()),
    }


def test_the_train_reading_draws_every_shard(polymnist_shards, monkeypatch):
    """The oracle's TrainReader reading must reach every shard, or a damaged one could go unread."""
    read = []
    original = SplitSource.read_shard

    def recording(self, shard, positions=None):
        read.append(shard.name)
        return original(self, shard, positions)

    monkeypatch.setattr(SplitSource, "read_shard", recording)
    _read_train(polymnist_shards / SPLIT)
    assert set(read) == {f"shard-{i:06d}.tar" for i in range(6)}


# ---------------------------------------------------------------- damage


@dataclass
class Damage:
    """What a case did, and what the oracle needs to know about it."""

    target: str
    """The damaged file's name: ``manifest.json`` or ``shard-00000N.tar``."""
    description: str
    expect_field: tuple[str, ...] = ()
    """For manifest field cases: every reading must raise a ManifestError naming one of these
    (or a field inside or around one of them)."""
    may_change_values: bool = False
    """True only for a same-size change inside an array's data bytes (the documented limitation)."""


def _manifest_path(split: Path) -> Path:
    return split / "manifest.json"


def _load_json(split: Path) -> dict:
    return json.loads(_manifest_path(split).read_text())


def _write_json(split: Path, data) -> None:
    _manifest_path(split).write_text(json.dumps(data, indent=2) + "\n")


def _typed_paths(data: dict) -> list[tuple[str, tuple, type]]:
    """(dotted path, JSON path, type) of every typed field of the manifest."""
    paths = [(key, (key,), kind) for key, kind in MANIFEST_FIELD_TYPES.items() if key in data]
    for i, modality in enumerate(data["modalities"]):
        for key, kind in MODALITY_FIELD_TYPES.items():
            paths.append((f"modalities[{i}].{key}", ("modalities", i, key), kind))
        for j in range(len(modality["shape"])):
            paths.append((f"modalities[{i}].shape[{j}]", ("modalities", i, "shape", j), int))
    for k in range(len(data["label_names"])):
        paths.append((f"label_names[{k}]", ("label_names", k), str))
    for i in range(len(data["shards"])):
        for key, kind in SHARD_FIELD_TYPES.items():
            paths.append((f"shards[{i}].{key}", ("shards", i, key), kind))
    return paths


def _parent_and_key(data, path: tuple):
    node = data
    for part in path[:-1]:
        node = node[part]
    return node, path[-1]


def _of_another_type(rng: random.Random, kind: type, path: str):
    def same_type(value):
        if kind is int:  # JSON true is not a count, 2.5 is not an integer
            return isinstance(value, int) and not isinstance(value, bool)
        if kind is bool:
            return isinstance(value, bool)
        return isinstance(value, kind)

    choices = [v for v in JSON_VALUES if not same_type(v) and not (path == "seed" and v is None)]
    return rng.choice(choices)


def _flip(data: bytearray, offset: int, mask: int) -> str:
    before = data[offset]
    data[offset] ^= mask
    return f"byte {offset} ^= {mask:#04x} ({bytes([before])!r} -> {bytes([data[offset]])!r})"


def damage_manifest(kind: str, rng: random.Random, split: Path) -> Damage:
    path = _manifest_path(split)
    if kind == "flip":
        raw = bytearray(path.read_bytes())
        done = _flip(raw, rng.randrange(len(raw)), rng.randrange(1, 256))
        path.write_bytes(bytes(raw))
        return Damage("manifest.json", f"manifest.json {done}")
    if kind == "truncate":
        raw = path.read_bytes()
        cut = rng.randrange(len(raw))
        path.write_bytes(raw[:cut])
        return Damage("manifest.json", f"manifest.json cut to {cut} of {len(raw)} bytes")
    data = _load_json(split)
    if kind == "wrong_type":
        dotted, json_path, field_type = rng.choice(_typed_paths(data))
        node, key = _parent_and_key(data, json_path)
        value = _of_another_type(rng, field_type, dotted)
        node[key] = value
        _write_json(split, data)
        return Damage("manifest.json", f"manifest.json {dotted} = {value!r}", expect_field=(dotted,))
    if kind == "missing":
        i = rng.randrange(len(data["modalities"]))
        j = rng.randrange(len(data["shards"]))
        choices = [(key, (key,)) for key in REQUIRED_TOP]
        choices += [(f"modalities[{i}].{key}", ("modalities", i, key)) for key in REQUIRED_MODALITY]
        choices += [(f"shards[{j}].{key}", ("shards", j, key)) for key in SHARD_FIELD_TYPES]
        dotted, json_path = rng.choice(choices)
        node, key = _parent_and_key(data, json_path)
        del node[key]
        _write_json(split, data)
        return Damage("manifest.json", f"manifest.json without {dotted}", expect_field=(dotted,))
    if kind == "renamed_key":
        i = rng.randrange(len(data["modalities"]))
        j = rng.randrange(len(data["shards"]))
        choices = [((), key) for key in data] + [(("modalities", i), key) for key in data["modalities"][i]]
        choices += [(("shards", j), key) for key in data["shards"][j]]
        parent_path, key = rng.choice(choices)
        node = data
        for part in parent_path:
            node = node[part]
        position = rng.randrange(len(key))
        letter = rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c != key[position]])
        renamed = key[:position] + letter + key[position + 1:]
        # Keep the key order: a manifest edited by hand (or flipped) keeps its layout.
        items = [(renamed if k == key else k, v) for k, v in node.items()]
        node.clear()
        node.update(items)
        _write_json(split, data)
        prefix = "".join(f"[{p}]" if isinstance(p, int) else p for p in parent_path)
        old, new = (f"{prefix}.{key}", f"{prefix}.{renamed}") if prefix else (key, renamed)
        return Damage("manifest.json", f"manifest.json key {old!r} renamed {renamed!r}", expect_field=(old, new))
    if kind == "wrong_count":
        j = rng.randrange(len(data["shards"]))
        what = rng.choice(["num_samples", "samples_per_shard", "shard_num_samples", "shard_size", "shard_sha256",
                           "consistent"])
        delta = rng.choice([-1, 1]) * rng.randrange(1, 4)
        if what == "num_samples":
            data["num_samples"] += delta
        elif what == "samples_per_shard":
            data["samples_per_shard"] += delta
        elif what == "shard_num_samples":
            data["shards"][j]["num_samples"] += delta
        elif what == "shard_size":
            data["shards"][j]["size"] += delta
        elif what == "shard_sha256":
            data["shards"][j]["sha256"] = f"{rng.getrandbits(256):064x}"
        else:
            per_shard = data["samples_per_shard"] + delta
            data["samples_per_shard"] = per_shard
            data["num_samples"] = per_shard * len(data["shards"])
            for shard in data["shards"]:
                shard["num_samples"] = per_shard
        _write_json(split, data)
        return Damage("manifest.json", f"manifest.json {what} changed (shard {j}, delta {delta})")
    if kind == "wrong_spec":
        i = rng.randrange(len(data["modalities"]))
        modality = data["modalities"][i]
        what = rng.choice(["dtype", "shape", "kind", "likelihood", "name", "label_kind"])
        if what == "dtype":
            modality["dtype"] = rng.choice(["int8", "uint16", "float32", "bool", "int64", "object", "U3", "<M8[s]"])
            value = modality["dtype"]
        elif what == "shape":
            modality["shape"] = rng.choice([[3, 28, 29], [28, 3, 28], [3, 784], [3, 28, 28, 1], [], [0, 28, 28],
                                            [3, 28, 28_000_000_000], [3, 28, -28]])
            value = modality["shape"]
        elif what == "kind":
            modality["kind"] = value = rng.choice(["video", "Image", ""])
        elif what == "likelihood":
            modality["likelihood"] = value = rng.choice(["poisson", "Laplace", ""])
        elif what == "name":
            others = [m["name"] for m in data["modalities"] if m is not modality]
            modality["name"] = value = rng.choice([*others, "m9", "m.0", "", "m0/x"])
        else:
            data["label_kind"] = value = rng.choice(["multi", "none", "Single", ""])
        _write_json(split, data)
        where = "label_kind" if what == "label_kind" else f"modalities[{i}].{what}"
        return Damage("manifest.json", f"manifest.json {where} = {value!r}")
    raise AssertionError(kind)


@dataclass(frozen=True)
class Member:
    name: str
    header: int
    """Offset of its 512-byte tar header."""
    data: int
    """Offset of its payload."""
    size: int

    @property
    def padded_end(self) -> int:
        return self.data + -(-self.size // 512) * 512


def _members(raw: bytes) -> list[Member]:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return [Member(m.name, m.offset, m.offset_data, m.size) for m in tar.getmembers()]


def _npy_header_length(raw: bytes, member: Member) -> int:
    payload = raw[member.data: member.data + member.size]
    assert payload[:6] == b"\x93NUMPY" and payload[6] == 1
    return 10 + int.from_bytes(payload[8:10], "little")


def _in_array_data(raw: bytes, members: list[Member], offset: int) -> bool:
    """True when ``offset`` lies inside the data bytes of an npy array (not its header or padding)."""
    for member in members:
        if member.data <= offset < member.data + member.size:
            return offset >= member.data + _npy_header_length(raw, member)
    return False


def _rewrite_tar(path: Path, entries: list[tuple[str, bytes]]) -> None:
    """Write ``entries`` as a ustar archive with the builder's fixed member metadata."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(payload), 0, 0o444
            info.uname = info.gname = "mmplatform"
            tar.addfile(info, io.BytesIO(payload))
    path.write_bytes(buffer.getvalue())


def _match_manifest_to(split: Path, shard_name: str) -> None:
    """Rewrite the manifest's size and sha256 of ``shard_name`` to the damaged file's (as a buggy
    builder would), so that only reading the shard can notice the damage."""
    data = _load_json(split)
    raw = (split / shard_name).read_bytes()
    for shard in data["shards"]:
        if shard["name"] == shard_name:
            shard["size"], shard["sha256"] = len(raw), hashlib.sha256(raw).hexdigest()
    _write_json(split, data)


def damage_shard(kind: str, rng: random.Random, split: Path) -> Damage:
    shard_name = f"shard-{rng.randrange(6):06d}.tar"
    path = split / shard_name
    raw = bytearray(path.read_bytes())
    members = _members(bytes(raw))
    data_end = members[-1].padded_end

    def entries() -> list[tuple[str, bytes]]:
        return [(m.name, bytes(raw[m.data: m.data + m.size])) for m in members]

    if kind in ("truncate", "truncate_resized"):
        cut = rng.randrange(1, len(raw))
        path.write_bytes(bytes(raw[:cut]))
        damage = Damage(shard_name, f"{shard_name} cut to {cut} of {len(raw)} bytes (data ends at {data_end})")
        if kind == "truncate_resized":
            _match_manifest_to(split, shard_name)
            damage.description += ", manifest rewritten to match"
        return damage
    if kind.startswith("flip_"):
        if kind == "flip_header":
            member = rng.choice(members)
            offset = member.header + rng.randrange(512)
        elif kind == "flip_payload":
            member = rng.choice(members)
            offset = rng.randrange(member.data, member.padded_end)
        else:
            offset = rng.randrange(len(raw))
        inside = _in_array_data(bytes(raw), members, offset)
        done = _flip(raw, offset, rng.randrange(1, 256))
        path.write_bytes(bytes(raw))
        where = next((m.name for m in members if m.header <= offset < m.padded_end), "end of archive")
        return Damage(shard_name, f"{shard_name} {done} in {where}", may_change_values=inside)
    if kind == "label_out_of_range":
        member = rng.choice([m for m in members if m.name.endswith(".labels.npy")])
        offset = member.data + _npy_header_length(bytes(raw), member) + 7  # int64 little-endian: its high byte
        done = _flip(raw, offset, rng.randrange(1, 256))
        path.write_bytes(bytes(raw))
        return Damage(shard_name, f"{shard_name} {done} in {member.name}")
    keys = sorted({m.name.split(".", 1)[0] for m in members})
    items = entries()
    if kind == "member_removed":
        removed = rng.choice(items)
        items.remove(removed)
        description = f"{shard_name} without {removed[0]}"
    elif kind == "member_duplicated":
        index = rng.randrange(len(items))
        items.insert(index + 1, items[index])
        description = f"{shard_name} with {items[index][0]} twice"
    elif kind == "sample_removed":
        key = rng.choice(keys)
        items = [item for item in items if not item[0].startswith(f"{key}.")]
        description = f"{shard_name} without sample {key}"
    elif kind == "sample_added":
        key = rng.choice(keys)
        extra = [(f"99999999.{name.split('.', 1)[1]}", payload) for name, payload in items
                 if name.startswith(f"{key}.")]
        items += extra
        description = f"{shard_name} with an 11th sample (a copy of {key} as 99999999)"
    elif kind == "member_wrong_array":
        index = rng.randrange(len(items))
        name, _ = items[index]
        if name.endswith(".labels.npy"):
            array = rng.choice([np.int32(3), np.array([3]), np.zeros(10, np.uint8), np.float64(3.0)])
        else:
            array = rng.choice([np.zeros((3, 28, 28), np.int8), np.zeros((3, 28, 28), np.uint16),
                                np.zeros((3, 28, 27), np.uint8), np.zeros((28, 28, 3), np.uint8),
                                np.zeros((3, 28, 28), np.float32)])
        items[index] = (name, encode_npy(np.asarray(array)))
        description = f"{shard_name} member {name} holds {np.asarray(array).dtype}{list(np.shape(array))}"
    else:
        raise AssertionError(kind)
    _rewrite_tar(path, items)
    _match_manifest_to(split, shard_name)
    return Damage(shard_name, description + ", manifest rewritten to match")


# ---------------------------------------------------------------- the oracle


def _json_diff(a, b, path: str = "") -> list[str]:
    """Paths where two JSON values differ (keys present on one side only included)."""
    if type(a) is not type(b):
        return [path]
    if isinstance(a, dict):
        out = []
        for key in sorted(a.keys() | b.keys()):
            child = f"{path}.{key}" if path else key
            out += [child] if key not in a or key not in b else _json_diff(a[key], b[key], child)
        return out
    if isinstance(a, list):
        if len(a) != len(b):
            return [path]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _json_diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def _loaded_manifest_json(split: Path):
    """The damaged manifest as JSON when it parses and the platform loads it, else None."""
    from data_pipelines.manifest import load_manifest

    try:
        load_manifest(split)
        return _load_json(split)
    except ManifestError:
        return None


def _sha256_mismatches(split: Path) -> list[str]:
    """Shards of a loadable manifest whose file exists with the recorded size but another sha256."""
    from data_pipelines.manifest import load_manifest

    manifest = load_manifest(split)
    found = []
    for shard in manifest.shards:
        path = split / shard.name
        if path.is_file() and path.stat().st_size == shard.size:
            if hashlib.sha256(path.read_bytes()).hexdigest() != shard.sha256:
                found.append(shard.name)
    return found


def _related(named: str, expected: str) -> bool:
    """The named field is the expected one, or lies inside it, or contains it."""
    return any(a == b or a.startswith(b + ".") or a.startswith(b + "[") for a, b in ((named, expected),
                                                                                     (expected, named)))


def _check_error(name: str, error: BaseException, damage: Damage, context: str) -> None:
    message = str(error)
    assert isinstance(error, (ManifestError, ShardError)), (
        f"{context}: {name} reading raised {type(error).__name__}, not ManifestError/ShardError: {message}")
    assert "Traceback" not in message and "\n" not in message, f"{context}: {name}: not one line: {message!r}"
    if damage.target == "manifest.json":
        names_file = "manifest.json" in message or re.search(r"shard-\d{6}\.tar", message)
    else:
        names_file = damage.target in message
    assert names_file, f"{context}: {name}: the message does not name {damage.target}: {message}"
    assert WHAT.search(message), f"{context}: {name}: the message does not say what is wrong: {message}"
    if damage.expect_field:
        assert isinstance(error, ManifestError), f"{context}: {name}: expected a ManifestError, got {message}"
        named = re.search(r"field (?:'([^']+)'|\"([^\"]+)\")", message)
        assert named and any(_related(named.group(1) or named.group(2), e) for e in damage.expect_field), (
            f"{context}: {name}: expected the field {' or '.join(damage.expect_field)} to be named: {message}")


@pytest.mark.parametrize("case", CASES)
def test_damaged_input_fails_naming_file_and_field_or_reads_unchanged(case, polymnist_copy, pristine):
    kind, index = case.rsplit("-", 1)
    rng = random.Random(f"{FUZZ_SEED}/{kind}/{index}")
    split = polymnist_copy / SPLIT
    family, _, what = kind.partition("_")
    damage = (damage_manifest if family == "manifest" else damage_shard)(what, rng, split)
    context = f"[fuzz seed {FUZZ_SEED} (MMPLATFORM_FUZZ_SEED), case {case}: {damage.description}]"

    outcomes = {name: _run_with_timeout(read, split) for name, read in READINGS.items()}
    for name, outcome in outcomes.items():
        if outcome.error is not None:
            _check_error(name, outcome.error, damage, context)
            continue
        if not _equal(outcome.values, pristine["readings"][name]):
            assert damage.may_change_values and name != "sha256", (
                f"{context}: the {name} reading silently returned changed values")
        assert not damage.expect_field, f"{context}: the {name} reading accepted the damaged field"

    loaded = _loaded_manifest_json(split)
    if loaded is not None and family == "manifest":
        changed = [p for p in _json_diff(pristine["manifest"], loaded) if not DESCRIPTIVE.match(p)]
        if changed:
            accepted = [name for name, outcome in outcomes.items() if outcome.error is None]
            assert not accepted, f"{context}: manifest fields {changed} changed, yet {accepted} read silently"
    if loaded is not None:
        mismatched = _sha256_mismatches(split)
        if mismatched:
            error = outcomes["sha256"].error
            assert error is not None and "sha256 differs" in str(error) and any(s in str(error) for s in mismatched), (
                f"{context}: {mismatched} differ from their sha256, but verify='sha256' said {error}")


def test_the_generator_is_reproducible(tmp_path, polymnist_shards):
    """Equal seeds damage equally (a failing case can be rerun); the case list stays bounded."""
    import shutil

    assert len(CASES) == sum(CASE_COUNTS.values()) == 60
    first, second = (Path(shutil.copytree(polymnist_shards / SPLIT, tmp_path / name)) for name in ("a", "b"))
    for split in (first, second):
        damage_shard("flip_anywhere", random.Random(f"{FUZZ_SEED}/check"), split)
        damage_manifest("flip", random.Random(f"{FUZZ_SEED}/check"), split)
    for name in ["manifest.json", *(f"shard-{i:06d}.tar" for i in range(6))]:
        assert (first / name).read_bytes() == (second / name).read_bytes()


# ---------------------------------------------------------------- rare draws, fixed


EDGE_CASES = {
    # Each was silently accepted, or failed without naming the file, before the readers checked it.
    "dtype_object": (lambda d: d["modalities"][1].update(dtype="object"),
                     r"manifest\.json: field 'modalities\[1\]\.dtype' is 'object', expected a numeric numpy dtype"),
    "shape_of_terabytes": (lambda d: d["modalities"][1].update(shape=[3, 28, 28_000_000_000]),
                           r"shard-\d{6}\.tar sample \d+ member m1\.npy: uint8\[3, 28, 28\], the manifest "
                           r"says uint8\[3, 28, 28000000000\]"),
    "shape_with_true": (lambda d: d["modalities"][1].update(shape=[3, True, 28]),
                        r"manifest\.json: field 'modalities\[1\]\.shape' is \[3, True, 28\]"),
    "dropped_samples_true": (lambda d: d.update(dropped_samples=True),
                             r"manifest\.json: field 'dropped_samples' must be a non-negative integer"),
    "duplicate_label_names": (lambda d: d["label_names"].__setitem__(3, "2"),
                              r"manifest\.json: field 'label_names' has duplicate names"),
    "restricted_misspelt": (lambda d: d.update(restricetd=True),
                            r"manifest\.json: field 'restricetd' is not a field of the manifest"),
    "vocabulary_of_numbers": (lambda d: d["modalities"][0].update(vocabulary=[1, 2]),
                              r"manifest\.json: field 'modalities\[0\]\.vocabulary' must be a list of strings"),
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_rare_manifest_damage_fails_naming_file_and_field(case, polymnist_copy):
    change, expected = EDGE_CASES[case]
    split = polymnist_copy / SPLIT
    data = _load_json(split)
    change(data)
    _write_json(split, data)
    for name, read in READINGS.items():
        outcome = _run_with_timeout(read, split)
        assert isinstance(outcome.error, (ManifestError, ShardError)), f"{case}: {name}: {outcome.error!r}"
        assert re.search(expected, str(outcome.error)), f"{case}: {name}: {outcome.error}"
