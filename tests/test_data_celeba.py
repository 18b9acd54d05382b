"""Bimodal CelebA from the official files: the MoPoE/mmJSD text, the image crop, the whole build
on a fixture in the official layout (read back through the readers), reproducibility, reuse of
an identical build, and one-line errors naming file and line for every kind of bad input."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipelines.celeba import (
    ALPHABET,
    ATTRIBUTE_NAMES,
    AttributeTextEncoder,
    CelebAError,
    attribute_text,
    build_celeba,
    decode_text,
    encode_text,
    load_image,
    random_offset,
    read_source,
    write_celeba_fixture,
)
from data_pipelines.manifest import load_manifest
from data_pipelines.readers import EvalReader, TrainReader
from data_pipelines.shard_source import iterate_split

QUIET = {"progress": False, "log": lambda _: None}
FIXTURE_IMAGES = 40
"""32 train (partition 0), 4 validation (1, "test" as published), 4 test (2, unused by default)."""


def _shard_hashes(split_dir: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(split_dir.glob("shard-*.tar"))]


def _official_rows(source: Path) -> tuple[list[str], dict[str, list[int]], dict[str, int]]:
    """The fixture's files parsed the plain way: names, values per image, partition per image."""
    lines = (source / "list_attr_celeba.txt").read_text().splitlines()
    values = {fields[0]: [int(v) for v in fields[1:]] for fields in map(str.split, lines[2:])}
    partition_lines = (source / "list_eval_partition.txt").read_text().splitlines()
    partitions = {name: int(p) for name, p in map(str.split, partition_lines)}
    return lines[1].split(), values, partitions


def _published_text(names: list[str], values: list[int]) -> str:
    """mmJSD's recipe written out independently: join the 1s, drop the last until <= 256, respell."""
    chosen = [name for name, value in zip(names, values) if value == 1]
    while len(", ".join(chosen)) > 256:
        chosen = chosen[:-1]
    return ", ".join(chosen).replace("_", " ").lower()


@pytest.fixture(scope="module")
def small_celeba(tmp_path_factory) -> Path:
    """40 images (not the session-wide conftest fixture: these tests count on its exact split sizes)."""
    return write_celeba_fixture(tmp_path_factory.mktemp("celeba") / "CelebA", FIXTURE_IMAGES, seed=3)


@pytest.fixture(scope="module")
def small_celeba_shards(small_celeba, tmp_path_factory) -> Path:
    """Built with two worker processes and shards of 8: 4 train shards, 1 test shard of 4."""
    out = tmp_path_factory.mktemp("small_celeba_shards") / "shards"
    build_celeba(small_celeba, out, seed=5, samples_per_shard=8, workers=2, **QUIET)
    return out


# ---------------------------------------------------------------- text


def test_alphabet_is_mopoes():
    assert len(ALPHABET) == 71 and len(set(ALPHABET)) == 70
    assert [i for i, char in enumerate(ALPHABET) if char == "-"] == [36, 59]
    assert ALPHABET[:26] == tuple("abcdefghijklmnopqrstuvwxyz") and ALPHABET[26:36] == tuple("0123456789")
    assert ALPHABET[-2:] == (" ", "\n") and ALPHABET[55] == "*"
    # str.find semantics: the first occurrence of '-' is its id, 59 is never produced.
    assert encode_text("a-z 9", 0).tolist()[:5] == [0, 36, 25, 69, 35]


def test_attribute_text_follows_column_order_and_respells():
    names = ["Big_Nose", "Arched_Eyebrows", "5_o_Clock_Shadow", "Wearing_Hat"]
    assert attribute_text(names, [True, False, True, True]) == "big nose, 5 o clock shadow, wearing hat"
    assert attribute_text(names, [False] * 4) == ""


def test_truncation_drops_last_attributes_until_256():
    # 120 + 2 + 120 = 242 fits; adding ", " + 20 makes 264: the last one goes.
    assert attribute_text(["X" * 120, "Y" * 120, "Z" * 20], [True] * 3) == "x" * 120 + ", " + "y" * 120
    # The first attribute is never dropped for a later one that would fit on its own.
    assert attribute_text(["a" * 250, "b" * 3, "c" * 3], [True] * 3) == "a" * 250 + ", bbb"
    assert len(attribute_text(["a" * 251, "b" * 3], [True] * 2)) == 256  # exactly 256 fits
    assert attribute_text(["a" * 300], [True]) == ""
    # All 40 official attributes: 502 characters, cut after "Male" (244).
    assert attribute_text(ATTRIBUTE_NAMES, [True] * 40) == (
        "5 o clock shadow, arched eyebrows, attractive, bags under eyes, bald, bangs, big lips, big nose, "
        "black hair, blond hair, blurry, brown hair, bushy eyebrows, chubby, double chin, eyeglasses, goatee, "
        "gray hair, heavy makeup, high cheekbones, male")


def test_padding_without_and_with_offset():
    right = encode_text("bald", 0)
    assert right.dtype == np.uint8 and right.shape == (256,)
    assert right[:4].tolist() == [1, 0, 11, 3] and set(right[4:].tolist()) == {55}
    shifted = encode_text("bald", 10)
    assert set(shifted[:10].tolist()) == {55} and shifted[10:14].tolist() == [1, 0, 11, 3]
    assert set(shifted[14:].tolist()) == {55}
    assert encode_text("x" * 256, 0)[-1] == ALPHABET.index("x")
    with pytest.raises(ValueError, match="does not fit"):
        encode_text("bald", 253)


def test_random_offsets_are_seeded_per_image_and_independent_of_order():
    names = [f"{i:06d}.jpg" for i in range(1, 201)]
    forward = {name: random_offset(7, name, 100) for name in names}
    backward = {name: random_offset(7, name, 100) for name in reversed(names)}
    assert forward == backward
    assert set(forward.values()) <= set(range(157)) and len(set(forward.values())) > 50
    assert min(forward.values()) <= 10 and max(forward.values()) >= 146  # spans [0, 256 - 100]
    assert {name: random_offset(8, name, 100) for name in names} != forward
    assert random_offset(7, "000001.jpg", 256) == 0

    present = np.zeros(len(ATTRIBUTE_NAMES), dtype=bool)
    present[[4, 20]] = True  # Bald, Male
    random_encoder = AttributeTextEncoder(ATTRIBUTE_NAMES, "random", seed=7)
    for name in names[:20]:
        offset = random_offset(7, name, len("bald, male"))
        assert random_encoder.encode(name, present).tolist() == encode_text("bald, male", offset).tolist()
    plain = AttributeTextEncoder(ATTRIBUTE_NAMES, "none", seed=7).encode("000001.jpg", present)
    assert plain.tolist() == encode_text("bald, male", 0).tolist()


def test_unencodable_characters_name_the_attribute():
    with pytest.raises(ValueError, match="attribute 'Bärtig' has the character 'ä'"):
        AttributeTextEncoder(["Bald", "Bärtig"])
    with pytest.raises(ValueError, match="character 'é'"):
        encode_text("café")
    with pytest.raises(ValueError, match="text_offset"):
        AttributeTextEncoder(["Bald"], "left")


def test_decode_text_strips_padding_only_at_the_ends():
    ids = encode_text("bald, wearing hat", 40)
    assert decode_text(ids, ALPHABET) == "bald, wearing hat"
    assert decode_text(torch.from_numpy(ids.astype(np.int64)), ALPHABET) == "bald, wearing hat"
    assert decode_text(encode_text("a*b", 3), ALPHABET) == "a*b"
    assert decode_text(encode_text("", 0), ALPHABET) == ""
    with pytest.raises(ValueError, match="id 71 is outside"):
        decode_text([0, 71], ALPHABET)


# ---------------------------------------------------------------- image


def test_crop_and_resize_match_mopoes_transform(small_celeba, small_celeba_shards):
    """MoPoE's own transform chain (tensor crop, ToPILImage, bicubic Resize) on one image."""
    from torchvision import transforms

    crop = transforms.Lambda(lambda x: x[:, (218 - 148) // 2:(218 - 148) // 2 + 148,
                                         (178 - 148) // 2:(178 - 148) // 2 + 148])
    mopoe = transforms.Compose([transforms.ToTensor(), crop, transforms.ToPILImage(),
                                transforms.Resize((64, 64), interpolation=transforms.InterpolationMode.BICUBIC),
                                transforms.PILToTensor()])
    path = small_celeba / "img_align_celeba" / "000003.jpg"
    expected = mopoe(Image.open(path)).numpy()
    assert np.array_equal(load_image(path, "here"), expected)
    stored = next(s for s in iterate_split(small_celeba_shards / "train") if s.key == "00000002")
    assert stored.arrays["image"].dtype == np.uint8 and np.array_equal(stored.arrays["image"], expected)


# ---------------------------------------------------------------- the build


def test_build_writes_manifest_labels_text_and_partitions(small_celeba, small_celeba_shards):
    names, values, partitions = _official_rows(small_celeba)
    assert names == list(ATTRIBUTE_NAMES)
    expected_files = {split: [n for n in values if partitions[n] == partition]
                      for split, partition in (("train", 0), ("test", 1))}
    assert len(expected_files["train"]) == 32 and len(expected_files["test"]) == 4

    for split, files in expected_files.items():
        manifest = load_manifest(small_celeba_shards / split)
        assert (manifest.dataset, manifest.split, manifest.label_kind) == ("celeba", split, "multi")
        assert manifest.label_names == ATTRIBUTE_NAMES
        image, text = manifest.modalities
        assert (image.name, image.kind, image.shape, image.dtype, image.likelihood) == (
            "image", "image", (3, 64, 64), "uint8", "laplace")
        assert (text.name, text.kind, text.shape, text.dtype, text.likelihood) == (
            "text", "text", (256,), "uint8", "categorical")
        assert text.vocabulary == ALPHABET and image.vocabulary == ()
        assert manifest.seed == 5 and manifest.builder["text"]["offset"] == "random"
        assert manifest.builder["partitions"] == [0 if split == "train" else 1]
        assert manifest.source["kind"] == "official_files" and manifest.source["images"]["count"] == len(files)
        assert manifest.num_samples == len(files) and manifest.dropped_samples == 0

        samples = list(iterate_split(small_celeba_shards / split))
        offsets = []
        for sample, file_name in zip(samples, files, strict=True):
            assert sample.label.dtype == np.uint8
            assert sample.label.tolist() == [1 if v == 1 else 0 for v in values[file_name]]
            stored = "".join(ALPHABET[i] for i in sample.arrays["text"].tolist())
            expected = _published_text(names, values[file_name])
            offset = len(stored) - len(stored.lstrip("*"))
            assert stored == "*" * offset + expected + "*" * (256 - offset - len(expected)), file_name
            offsets.append(offset)
        assert len(set(offsets)) > 1, "random offsets all equal"
    # The fixture's first two images: all 40 attributes (truncated text) and none (empty text).
    first, second = list(iterate_split(small_celeba_shards / "train"))[:2]
    assert decode_text(first.arrays["text"], ALPHABET).endswith("high cheekbones, male")
    assert set(second.arrays["text"].tolist()) == {55}


def test_build_reads_back_through_the_readers(small_celeba_shards):
    evaluation = EvalReader(small_celeba_shards / "test", batch_size=3, rank=0, world_size=1)
    batches = list(evaluation)
    assert [len(b.keys) for b in batches] == [3, 1]
    stored = list(iterate_split(small_celeba_shards / "test"))
    labels = torch.cat([b.labels for b in batches])
    assert labels.dtype == torch.float32 and labels.shape == (4, 40)
    assert np.array_equal(labels.numpy(), np.stack([s.label for s in stored]).astype(np.float32))
    texts = torch.cat([b.inputs["text"] for b in batches])
    assert texts.dtype == torch.int64 and np.array_equal(texts.numpy(), np.stack([s.arrays["text"] for s in stored]))

    train = TrainReader(small_celeba_shards / "train", batch_size=8, steps_per_epoch=2, seed=0, rank=0, world_size=1,
                        shuffle_buffer=16)
    batch = next(iter(train))
    assert batch.inputs["image"].shape == (8, 3, 64, 64) and batch.inputs["image"].dtype == torch.float32
    assert 0.0 <= batch.inputs["image"].min() and batch.inputs["image"].max() <= 1.0
    assert batch.inputs["text"].shape == (8, 256) and int(batch.inputs["text"].max()) < len(ALPHABET)
    assert batch.labels.shape == (8, 40)


def test_build_is_bit_reproducible_across_worker_counts(small_celeba, small_celeba_shards, tmp_path):
    build_celeba(small_celeba, tmp_path / "again", seed=5, samples_per_shard=8, workers=1, **QUIET)
    for split in ("train", "test"):
        assert _shard_hashes(tmp_path / "again" / split) == _shard_hashes(small_celeba_shards / split)
        assert (tmp_path / "again" / split / "manifest.json").read_bytes() == (
            small_celeba_shards / split / "manifest.json").read_bytes()


def test_identical_build_is_left_alone_and_force_or_changes_rebuild(small_celeba, tmp_path):
    out = tmp_path / "out"
    settings = {"seed": 1, "samples_per_shard": 16, "limit": 16, "workers": 1, "progress": False}
    build_celeba(small_celeba, out, log=lambda _: None, **settings)
    shard = out / "train" / "shard-000000.tar"
    before = (shard.stat().st_ino, shard.stat().st_mtime_ns)
    hashes = _shard_hashes(out / "train")

    messages: list[str] = []
    manifests = build_celeba(small_celeba, out, log=messages.append, **settings)
    assert all("up to date" in message for message in messages) and len(messages) == 2
    assert (shard.stat().st_ino, shard.stat().st_mtime_ns) == before
    assert manifests["train"].num_samples == 16 and manifests["test"].num_samples == 4

    messages.clear()
    build_celeba(small_celeba, out, log=messages.append, force=True, **settings)
    assert all("wrote" in message for message in messages) and len(messages) == 2
    assert shard.stat().st_ino != before[0] and _shard_hashes(out / "train") == hashes

    messages.clear()
    manifests = build_celeba(small_celeba, out, log=messages.append, **{**settings, "text_offset": "none"})
    assert all("wrote" in message for message in messages)
    assert manifests["train"].seed is None and manifests["train"].builder["text"]["offset"] == "none"
    for sample in iterate_split(out / "train"):
        assert sample.arrays["text"][0] != 55 or set(sample.arrays["text"].tolist()) == {55}, "text not at 0"


def test_partitions_limit_and_dropped_samples(small_celeba, tmp_path):
    """Train from partitions 0 and 1, test from 2; the first 33 per split, in shards of at most 8:
    5 shards of 6, so the last 3 are dropped (and never decoded)."""
    manifests = build_celeba(small_celeba, tmp_path / "out", train_partitions=(0, 1), test_partitions=(2,),
                             limit=33, samples_per_shard=8, workers=2, **QUIET)
    train = manifests["train"]
    assert (train.num_samples, train.samples_per_shard, train.dropped_samples) == (30, 6, 3)
    assert manifests["test"].num_samples == 4 and train.builder["partitions"] == [0, 1]
    names, values, partitions = _official_rows(small_celeba)
    expected = [values[n] for n in values if partitions[n] in (0, 1)][:30]
    stored = [sample.label.tolist() for sample in iterate_split(tmp_path / "out" / "train")]
    assert stored == [[1 if v == 1 else 0 for v in row] for row in expected]
    with pytest.raises(ValueError, match="partition 1 is in both"):
        build_celeba(small_celeba, tmp_path / "x", train_partitions=(0, 1), test_partitions=(1,), **QUIET)
    with pytest.raises(ValueError, match="test_partitions"):
        build_celeba(small_celeba, tmp_path / "x", test_partitions=(3,), **QUIET)


def test_windows_line_endings_read_the_same(small_celeba, tmp_path):
    copy = write_celeba_fixture(tmp_path / "crlf", 6, seed=3)
    expected = read_source(copy)
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        path = copy / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    crlf = read_source(copy)
    assert crlf.attribute_names == expected.attribute_names and crlf.image_names == expected.image_names
    assert np.array_equal(crlf.attributes, expected.attributes) and np.array_equal(crlf.partitions, expected.partitions)


# ---------------------------------------------------------------- bad input: file and line named


def _edit_line(path: Path, line: int, edit) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[line - 1] = edit(lines[line - 1])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _drop_line(path: Path, line: int) -> None:
    lines = path.read_text().splitlines()
    del lines[line - 1]
    path.write_text("\n".join(lines) + "\n")


def _truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


ATTR, PART, IMAGES = "list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba"
# Fixture of 8 images: attribute row of image k on line k + 2; partitions 0 x6, 1, 2.
BAD_INPUTS = {
    "missing image": (lambda s: (s / IMAGES / "000003.jpg").unlink(),
                      r"000003\.jpg: missing image file \(listed at \S*list_attr_celeba\.txt:5\)"),
    "too few values": (lambda s: _edit_line(s / ATTR, 4, lambda l: l.rsplit(" ", 1)[0]),
                       r"list_attr_celeba\.txt:4: 39 values for 000002\.jpg, expected 40"),
    "value not 1/-1": (lambda s: _edit_line(s / ATTR, 6, lambda l: re.sub(r"^(\S+) +-?1", r"\1 0", l)),
                       r"list_attr_celeba\.txt:6: value '0' for attribute 5_o_Clock_Shadow of 000004\.jpg, "
                       r"expected 1 or -1"),
    "count mismatch": (lambda s: _edit_line(s / ATTR, 1, lambda l: "9"),
                       r"list_attr_celeba\.txt:1: announces 9 images, the file lists 8"),
    "count not a number": (lambda s: _edit_line(s / ATTR, 1, lambda l: "eight"),
                           r"list_attr_celeba\.txt:1: expected the image count, found 'eight'"),
    "image listed twice": (lambda s: _edit_line(s / ATTR, 6, lambda l: l.replace("000004.jpg", "000003.jpg")),
                           r"list_attr_celeba\.txt:6: 000003\.jpg is listed again \(first at line 5\)"),
    "bad attribute name": (lambda s: _edit_line(s / ATTR, 2, lambda l: l.replace("Bald ", "Bald€ ")),
                           r"list_attr_celeba\.txt:2: attribute 'Bald€' has the character '€'"),
    "unknown partition": (lambda s: _edit_line(s / PART, 3, lambda l: l.replace(" 0", " 3")),
                          r"list_eval_partition\.txt:3: partition '3' for 000003\.jpg, expected 0, 1 or 2"),
    "partition line malformed": (lambda s: _edit_line(s / PART, 2, lambda l: l + " extra"),
                                 r"list_eval_partition\.txt:2: expected '<file> <partition>'"),
    "only in attributes": (lambda s: _drop_line(s / PART, 5),
                           r"list_attr_celeba\.txt:7: 000005\.jpg is not listed in \S*list_eval_partition\.txt"),
    "only in partitions": (lambda s: (s / PART).write_text((s / PART).read_text() + "000099.jpg 0\n"),
                           r"list_eval_partition\.txt:9: 000099\.jpg is not listed in \S*list_attr_celeba\.txt"),
    "empty test split": (lambda s: (s / PART).write_text((s / PART).read_text().replace(" 1\n", " 0\n")),
                         r"list_eval_partition\.txt: no image has partition 1 \(the test split\)"),
    "missing attribute file": (lambda s: (s / ATTR).unlink(), r"list_attr_celeba\.txt: missing file"),
    "wrong image size": (lambda s: Image.new("RGB", (200, 200)).save(s / IMAGES / "000002.jpg"),
                         r"000002\.jpg: image is 200x200, the aligned CelebA images are 178x218 "
                         r"\(listed at \S*list_attr_celeba\.txt:4\)"),
    "truncated jpeg": (lambda s: _truncate(s / IMAGES / "000005.jpg", 300),
                       r"000005\.jpg: not a readable image .*listed at \S*list_attr_celeba\.txt:7\)"),
}
DETECTED_WHILE_DECODING = {"wrong image size", "truncated jpeg"}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_naming_file_and_line(case, tmp_path):
    source = write_celeba_fixture(tmp_path / "CelebA", 8, seed=1)
    damage, message = BAD_INPUTS[case]
    damage(source)
    out = tmp_path / "out"
    # Two workers where decoding finds the problem: the error crosses the process boundary intact.
    workers = 2 if case in DETECTED_WHILE_DECODING else 1
    with pytest.raises(CelebAError, match=message) as caught:
        build_celeba(source, out, samples_per_shard=4, workers=workers, **QUIET)
    assert "\n" not in str(caught.value)
    if case in DETECTED_WHILE_DECODING:
        # The damaged split was not written, nor left half-written.
        assert not (out / "train").exists()
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    else:
        assert not out.exists(), "files were written before the input was checked"


def test_fixture_layout_is_official(tmp_path):
    source = write_celeba_fixture(tmp_path / "CelebA", 12, seed=0)
    attr_lines = (source / "list_attr_celeba.txt").read_text().splitlines()
    assert attr_lines[0] == "12" and attr_lines[1] == " ".join(ATTRIBUTE_NAMES) + " "
    assert re.fullmatch(r"000001\.jpg( {2}1){40}", attr_lines[2])
    assert re.fullmatch(r"000002\.jpg( -1){40}", attr_lines[3])
    assert sorted(p.name for p in (source / "img_align_celeba").iterdir()) == [f"{i:06d}.jpg" for i in range(1, 13)]
    with Image.open(source / "img_align_celeba" / "000005.jpg") as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (178, 218))
    celeba = read_source(source)
    assert sorted(set(celeba.partitions.tolist())) == [0, 1, 2]
    assert 0.05 < celeba.attributes[2:].mean() < 0.8
    # A larger fixture with the same seed starts with the same images.
    bigger = write_celeba_fixture(tmp_path / "bigger", 14, seed=0)
    assert (bigger / "img_align_celeba" / "000005.jpg").read_bytes() == (
        source / "img_align_celeba" / "000005.jpg").read_bytes()
