"""The shard writer and manifest on their own: equal shards, deterministic bytes, the stored
member layout, multi-label and text samples (the contracts serve every dataset)."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch

from data_pipelines.manifest import ManifestError, load_manifest
from data_pipelines.modality import ModalitySpec
from data_pipelines.readers import EvalReader, TrainReader
from data_pipelines.shards import Sample, SplitHeader, encode_npy, plan_shards, write_split

IMAGE = ModalitySpec("img", "image", (1, 4, 4), "uint8", "laplace")
TEXT = ModalitySpec("text", "text", (5,), "int64", "categorical", vocabulary=("<pad>", "a", "b", "c"))
HEADER = SplitHeader("toy", "1", "train", (IMAGE, TEXT), "multi", ("red", "round", "big"),
                     builder={"n": 12}, source={"kind": "test"}, seed=0)


def _samples(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield Sample({"img": rng.integers(0, 256, (1, 4, 4), dtype=np.uint8),
                      "text": rng.integers(0, 4, 5).astype(np.int64)},
                     rng.integers(0, 2, 3).astype(np.uint8))


@pytest.mark.parametrize("count, maximum, expected", [
    (100, 10, (10, 10, 0)), (25, 10, (3, 8, 1)), (7, 10, (1, 7, 0)), (1001, 1000, (2, 500, 1)),
])
def test_plan_shards(count, maximum, expected):
    plan = plan_shards(count, maximum)
    assert (plan.num_shards, plan.samples_per_shard, plan.dropped_samples) == expected
    assert plan.dropped_samples < plan.num_shards


def test_encode_npy_matches_numpy_save():
    for array in (np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.array(7, dtype=np.int64),
                  np.zeros(5, dtype=np.float32)):
        buffer = io.BytesIO()
        np.save(buffer, array)
        assert encode_npy(array) == buffer.getvalue()
        assert np.array_equal(np.load(io.BytesIO(encode_npy(array))), array)


def test_member_layout_and_deterministic_bytes(tmp_path):
    write_split(tmp_path / "a", HEADER, _samples(12), 12, 4)
    write_split(tmp_path / "b", HEADER, _samples(12), 12, 4)
    manifest = load_manifest(tmp_path / "a")
    assert [s.sha256 for s in manifest.shards] == [s.sha256 for s in load_manifest(tmp_path / "b").shards]
    with tarfile.open(tmp_path / "a" / "shard-000000.tar") as archive:
        members = archive.getmembers()
    assert [m.name for m in members[:3]] == ["00000000.img.npy", "00000000.labels.npy", "00000000.text.npy"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(0, 0, 0, "mmplatform", 0o444)}
    assert not any(m.pax_headers for m in members)


def test_multi_label_and_text_batches(tmp_path):
    write_split(tmp_path, HEADER, _samples(12), 12, 4)
    expected = list(_samples(12))
    batch = next(iter(EvalReader(tmp_path, batch_size=12, rank=0, world_size=1)))
    assert batch.labels.dtype.is_floating_point and batch.labels.shape == (12, 3)
    assert batch.inputs["text"].dtype == torch.int64
    assert batch.inputs["text"].shape == (12, 5)
    for row, key in enumerate(batch.keys):
        assert np.array_equal(batch.labels[row].numpy(), expected[int(key)].label.astype(np.float32))
        assert np.array_equal(batch.inputs["text"][row].numpy(), expected[int(key)].arrays["text"])
        assert np.allclose(batch.inputs["img"][row].numpy() * 255, expected[int(key)].arrays["img"])
    # Train reader: full batches only.
    assert all(len(b.keys) == 5 for b in TrainReader(tmp_path, 5, 3, seed=0, rank=0, world_size=1))


def test_writer_rejects_samples_that_break_the_spec(tmp_path):
    def bad():
        yield from _samples(3)
        yield Sample({"img": np.zeros((1, 4, 5), np.uint8), "text": np.zeros(5, np.int64)}, np.zeros(3, np.uint8))

    with pytest.raises(ValueError, match=r"sample 3 member img\.npy: uint8\[1, 4, 5\], the modality spec says "
                                         r"uint8\[1, 4, 4\]"):
        write_split(tmp_path / "split", HEADER, bad(), 4, 4)
    assert not (tmp_path / "split").exists() and list(tmp_path.iterdir()) == []


def test_manifest_refuses_to_write_inconsistent_fields(tmp_path):
    bad = SplitHeader("toy", "1", "train", (IMAGE, IMAGE), "multi", ("x",))
    with pytest.raises(ManifestError, match="duplicate names"):
        write_split(tmp_path / "split", bad, _samples(2), 2, 2)
    assert list(tmp_path.iterdir()) == []


def test_restricted_mark_is_written_read_and_part_of_the_identity(tmp_path):
    import dataclasses
    import json

    from data_pipelines.shards import existing_build_matches

    restricted = dataclasses.replace(HEADER, restricted=True)
    write_split(tmp_path / "private", restricted, _samples(4), 4, 4)
    assert load_manifest(tmp_path / "private").restricted is True
    assert existing_build_matches(tmp_path / "private", restricted)
    assert not existing_build_matches(tmp_path / "private", HEADER)  # a public build of it is another build
    write_split(tmp_path / "public", HEADER, _samples(4), 4, 4)
    assert load_manifest(tmp_path / "public").restricted is False
    path = tmp_path / "public" / "manifest.json"
    data = json.loads(path.read_text())
    del data["restricted"]  # manifests written before the mark: public
    path.write_text(json.dumps(data))
    assert load_manifest(tmp_path / "public").restricted is False
    path.write_text(json.dumps({**data, "restricted": "yes"}))
    with pytest.raises(ManifestError, match="field 'restricted' must be true or false"):
        load_manifest(tmp_path / "public")
