"""CUB image-captions from both official forms: the word tokenizer on caption examples, the
vocabulary rule, the colour-group merge against MMVM's mapping, the whole build on fixtures in
both exact layouts (the same samples from the same birds, read back through the readers),
reproducibility, reuse of an identical build, and one-line errors naming file and line."""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipelines.cub import (
    GROUP_NAMES,
    SPECIAL_TOKENS,
    CaptionEncoder,
    CUBError,
    build_cub,
    build_vocabulary,
    decode_text,
    load_image,
    merge_colours,
    read_source,
    split_sentences,
    word_tokenize,
    write_cub_200_2011_fixture,
    write_cub_release_fixture,
)
from data_pipelines.cub.fixture import synthetic_birds
from data_pipelines.manifest import load_manifest
from data_pipelines.readers import EvalReader, TrainReader
from data_pipelines.shard_source import iterate_split

QUIET = {"progress": False, "log": lambda _: None}
IMAGES, SEED = 24, 3
"""6 classes: 5 train classes (20 images, 200 samples), 1 test class (4 images, 40 samples)."""


def _shard_hashes(split_dir: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(split_dir.glob("shard-*.tar"))]


@pytest.fixture(scope="module")
def birds():
    return synthetic_birds(IMAGES, SEED)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_cub_release_fixture(tmp_path_factory.mktemp("release"), IMAGES, SEED)


@pytest.fixture(scope="module")
def cub_2011(tmp_path_factory) -> Path:
    return write_cub_200_2011_fixture(tmp_path_factory.mktemp("cub_200_2011") / "CUB_200_2011", IMAGES, SEED)


@pytest.fixture(scope="module")
def release_shards(release, tmp_path_factory) -> Path:
    """Two decoding processes, shards of at most 50: 4 train shards of 50, 1 test shard of 40."""
    out = tmp_path_factory.mktemp("release_shards") / "shards"
    build_cub(release, out, samples_per_shard=50, workers=2, **QUIET)
    return out


@pytest.fixture(scope="module")
def cub_2011_shards(cub_2011, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cub_2011_shards") / "shards"
    build_cub(cub_2011, out, samples_per_shard=50, workers=1, **QUIET)
    return out


# ---------------------------------------------------------------- text


CAPTIONS = {
    # Real captions of text_testclasses.txt (the released file), then harder cases.
    "the medium sized bird has a dark grey color, a black downward curved beak, and long wings.":
        "the medium sized bird has a dark grey color , a black downward curved beak , and long wings .",
    "this bird has grey neck, head, wings and back, it has white around its bill.":
        "this bird has grey neck , head , wings and back , it has white around its bill .",
    "the bird's crown is red; it doesn't have a crest.": "the bird 's crown is red ; it does n't have a crest .",
    "this bird is red. it has a short beak.": "this bird is red . it has a short beak .",
    "a bird with 1,000 feathers: wow! really?": "a bird with 1,000 feathers : wow ! really ?",
    "the wings are blue... and the tail is short": "the wings are blue ... and the tail is short",
    'a "red" bird (small) -- cute.': "a `` red '' bird ( small ) -- cute .",
    "this bird cannot fly, it's 5.5 inches long.": "this bird can not fly , it 's 5.5 inches long .",
    "This Bird has a White Belly": "This Bird has a White Belly",
    "a medium-sized bird, e.g. a finch.": "a medium-sized bird , e.g. a finch .",
    "the birds' wings are black.": "the birds ' wings are black .",
}


@pytest.mark.parametrize("caption", sorted(CAPTIONS))
def test_word_tokenize_on_caption_examples(caption):
    assert word_tokenize(caption) == CAPTIONS[caption].split(" ")


def test_sentences_split_like_punkt():
    assert split_sentences("this bird is red. it has a beak! yes? no") == [
        "this bird is red.", "it has a beak!", "yes?", "no"]
    # No end after an abbreviation, nor after an initial or a number before a lower-case word;
    # a period inside a token never ends a sentence.
    assert split_sentences("e.g. the tail is long. mr. bird") == ["e.g. the tail is long.", "mr. bird"]
    assert split_sentences("grade a. the bird has 2. wings.x") == ["grade a. the bird has 2. wings.x"]
    assert split_sentences('it is red." then') == ['it is red."', "then"]
    assert split_sentences("") == [] and word_tokenize("  ") == []


def test_vocabulary_counts_more_than_three_in_first_occurrence_order():
    captions = [["b", "a", "c"]] * 3 + [["a", "b", "d"], ["<eos>", "d"] * 4, ["e"] * 4]
    # a: 4, b: 4, c: 3 (out), d: 5, e: 4, <eos> is special.
    assert build_vocabulary(captions) == SPECIAL_TOKENS + ("b", "a", "d", "e")
    assert SPECIAL_TOKENS == ("<exc>", "<pad>", "<eos>")
    assert build_vocabulary(captions, min_count=4) == SPECIAL_TOKENS + ("d",)


def test_encoding_truncates_pads_and_decodes():
    encoder = CaptionEncoder(SPECIAL_TOKENS + ("this", "bird", "is", "red", "."))
    ids = encoder.encode("this bird is blue.")
    assert ids.dtype == np.uint16 and ids.shape == (32,)
    assert ids[:6].tolist() == [3, 4, 5, 0, 7, 2] and set(ids[6:].tolist()) == {1}  # blue -> <exc>, <eos>, <pad>
    assert decode_text(ids, encoder.vocabulary) == "this bird is <exc> ."
    long = encoder.encode(" ".join(["bird"] * 40))
    assert long[:31].tolist() == [4] * 31 and long[31] == 2
    assert decode_text(torch.tensor([3, 1, 4, 2, 5, 5]), encoder.vocabulary) == "this bird"  # stops at <eos>
    with pytest.raises(ValueError, match="id 8 is outside"):
        decode_text([3, 8], encoder.vocabulary)
    with pytest.raises(ValueError, match="must start with"):
        CaptionEncoder(("a", "b", "c"))


# ---------------------------------------------------------------- labels


MMVM_COLOUR_COMBINE = {  # mmvmvae utils/CUBDataset.py, indices into attributes 248:263
    "blue2red": [0, 2, 3, 4, 8, 9, 13], "brown": [1], "grey": [5], "yellow": [6, 7, 10, 14], "black": [11],
    "white": [12]}


def test_colour_groups_merge_as_mmvm():
    colours = np.random.default_rng(0).integers(0, 2, (200, 15)).astype(np.uint8)
    expected = np.stack([colours[:, idx].max(axis=1) for idx in MMVM_COLOUR_COMBINE.values()], axis=1)
    merged = merge_colours(colours)
    assert merged.dtype == np.uint8 and np.array_equal(merged, expected)
    assert GROUP_NAMES == tuple(MMVM_COLOUR_COMBINE)
    with pytest.raises(ValueError, match="15"):
        merge_colours(np.zeros((2, 14)))


# ---------------------------------------------------------------- the build


def test_both_layouts_read_the_same_birds(release, cub_2011, birds, tmp_path):
    zipped = write_cub_release_fixture(tmp_path, IMAGES, SEED, as_zip=True)
    for path, form in ((release, "release"), (zipped, "release"), (cub_2011, "cub_200_2011")):
        cub = read_source(path)
        assert cub.form == form and cub.has_labels == (form == "cub_200_2011")
        for split in ("train", "test"):
            expected = [b for b in birds if b.split == split]
            assert cub.splits[split].image_names == tuple(b.name for b in expected)
            assert cub.splits[split].captions == tuple(b.captions for b in expected)
    assert read_source(release.parent).form == "release"  # the folder holding cub/
    colours = read_source(cub_2011).splits["train"].colours
    assert np.array_equal(colours, np.stack([b.colours for b in birds if b.split == "train"]))


def test_build_writes_manifest_pairs_and_labels(cub_2011, cub_2011_shards, birds):
    train_captions = [c for b in birds if b.split == "train" for c in b.captions]
    counts = Counter(word for caption in train_captions for word in word_tokenize(caption))
    expected_vocabulary = [w for w in dict.fromkeys(w for c in train_captions for w in word_tokenize(c))
                           if counts[w] > 3]
    for split, size in (("train", 200), ("test", 40)):
        manifest = load_manifest(cub_2011_shards / split)
        assert (manifest.dataset, manifest.split, manifest.label_kind, manifest.label_names) == (
            "cub", split, "multi", GROUP_NAMES)
        image, text = manifest.modalities
        assert (image.name, image.shape, image.dtype, image.likelihood) == ("image", (3, 64, 64), "uint8", "laplace")
        assert (text.name, text.shape, text.dtype, text.likelihood) == ("text", (32,), "uint16", "categorical")
        assert text.vocabulary == SPECIAL_TOKENS + tuple(expected_vocabulary)
        assert manifest.builder["labels"]["file"] == "attributes/image_attribute_labels.txt"
        assert manifest.num_samples == size and manifest.source["kind"] == "cub_200_2011"

        chosen = [b for b in birds if b.split == split]
        encoder = CaptionEncoder(text.vocabulary)
        samples = list(iterate_split(cub_2011_shards / split))
        for k, sample in enumerate(samples):
            bird = chosen[k // 10]
            assert sample.arrays["text"].tolist() == encoder.encode(bird.captions[k % 10]).tolist()
            assert sample.label.tolist() == merge_colours(bird.colours[None])[0].tolist()
        for i in range(0, len(samples), 10):
            path = cub_2011 / "images" / chosen[i // 10].name
            assert np.array_equal(samples[i].arrays["image"], load_image(str(path), "here"))
            assert all(np.array_equal(samples[i].arrays["image"], s.arrays["image"]) for s in samples[i:i + 10])
    # The test class's species word occurs only in test captions: outside the vocabulary, so <exc>.
    test_text = load_manifest(cub_2011_shards / "test").modality("text")
    assert "nuthatch" not in test_text.vocabulary and "albatross" in test_text.vocabulary
    first = next(iter(iterate_split(cub_2011_shards / "train")))
    assert decode_text(first.arrays["text"], test_text.vocabulary).startswith("this ")
    long = list(iterate_split(cub_2011_shards / "train"))[8].arrays["text"]  # image 1, caption 9: 31 + <eos>
    assert long[31] == 2 and 1 not in long.tolist()


def test_release_builds_the_same_samples_without_labels(release_shards, cub_2011_shards, tmp_path, cub_2011):
    for split in ("train", "test"):
        manifest = load_manifest(release_shards / split)
        assert manifest.label_kind == "none" and manifest.label_names == ()
        assert manifest.builder["labels"] == {"kind": "none"}
        assert manifest.source["kind"] == "release"
        assert manifest.modalities == load_manifest(cub_2011_shards / split).modalities
        ours = list(iterate_split(release_shards / split))
        theirs = list(iterate_split(cub_2011_shards / split))
        assert [s.key for s in ours] == [s.key for s in theirs]
        for a, b in zip(ours, theirs, strict=True):
            assert np.array_equal(a.arrays["image"], b.arrays["image"]) and np.array_equal(a.arrays["text"],
                                                                                            b.arrays["text"])
            assert a.label.shape == (0,)
    # Without a label file the CUB_200_2011 form builds byte-identical shards to the release.
    bare = write_cub_200_2011_fixture(tmp_path / "bare", IMAGES, SEED, attributes=False, mmvm_labels=False)
    build_cub(bare, tmp_path / "bare_shards", samples_per_shard=50, workers=1, **QUIET)
    for split in ("train", "test"):
        assert _shard_hashes(tmp_path / "bare_shards" / split) == _shard_hashes(release_shards / split)
    # MMVM's dense labels.txt gives the labels of the official attribute file.
    (cub_2011_copy := write_cub_200_2011_fixture(tmp_path / "dense", IMAGES, SEED))
    (cub_2011_copy / "attributes" / "image_attribute_labels.txt").unlink()
    manifests = build_cub(cub_2011_copy, tmp_path / "dense_shards", samples_per_shard=50, workers=1, **QUIET)
    assert manifests["train"].builder["labels"]["file"] == "labels.txt"
    assert _shard_hashes(tmp_path / "dense_shards" / "train") == _shard_hashes(cub_2011_shards / "train")


def test_zip_and_folder_build_identical_shards(release_shards, tmp_path):
    zipped = write_cub_release_fixture(tmp_path, IMAGES, SEED, as_zip=True)
    with zipfile.ZipFile(zipped) as archive:
        assert "cub/text_testclasses.txt" in archive.namelist()
    build_cub(zipped, tmp_path / "out", samples_per_shard=50, workers=2, **QUIET)
    for split in ("train", "test"):
        assert _shard_hashes(tmp_path / "out" / split) == _shard_hashes(release_shards / split)


def test_resize_matches_the_references_transform(cub_2011):
    """mmvae/MultiVae ``Resize([64, 64])``, mmvmvae ``Resize((64, 64))``, on the PIL image."""
    from torchvision import transforms

    reference = transforms.Compose([transforms.Resize([64, 64]), transforms.PILToTensor()])
    path = next((cub_2011 / "images").rglob("*.jpg"))
    with Image.open(path) as image:
        assert image.size != (64, 64)
        expected = reference(image.convert("RGB")).numpy()
    assert np.array_equal(load_image(str(path), "here"), expected)


def test_build_reads_back_through_the_readers(cub_2011_shards, release_shards):
    batches = list(EvalReader(cub_2011_shards / "test", batch_size=16, rank=0, world_size=1))
    assert [len(b.keys) for b in batches] == [16, 16, 8]
    assert batches[0].inputs["text"].dtype == torch.int64 and batches[0].inputs["text"].shape == (16, 32)
    assert batches[0].labels.dtype == torch.float32 and batches[0].labels.shape == (16, 6)
    batch = next(iter(TrainReader(cub_2011_shards / "train", batch_size=8, steps_per_epoch=1, seed=0, rank=0,
                                  world_size=1, shuffle_buffer=20)))
    assert batch.inputs["image"].shape == (8, 3, 64, 64) and 0 <= batch.inputs["image"].min() <= 1
    # An unlabelled build batches like a labelled one, with an empty label vector per sample.
    unlabelled = next(iter(EvalReader(release_shards / "test", batch_size=16, rank=0, world_size=1)))
    assert unlabelled.labels.dtype == torch.float32 and unlabelled.labels.shape == (16, 0)


def test_build_is_bit_reproducible_across_worker_counts(release, release_shards, tmp_path):
    build_cub(release, tmp_path / "again", samples_per_shard=50, workers=1, **QUIET)
    for split in ("train", "test"):
        assert _shard_hashes(tmp_path / "again" / split) == _shard_hashes(release_shards / split)
        assert (tmp_path / "again" / split / "manifest.json").read_bytes() == (
            release_shards / split / "manifest.json").read_bytes()


def test_identical_build_is_left_alone_and_force_or_changes_rebuild(release_shards, tmp_path):
    source = write_cub_release_fixture(tmp_path / "src", IMAGES, SEED)
    out = tmp_path / "out"
    settings = {"samples_per_shard": 30, "limit": 3, "workers": 1, "progress": False}
    manifests = build_cub(source, out, log=lambda _: None, **settings)
    assert manifests["train"].num_samples == 30 and manifests["test"].num_samples == 30
    # limit keeps images, not the vocabulary: it is the full train split's.
    text = manifests["train"].modality("text")
    assert text.vocabulary == load_manifest(release_shards / "train").modality("text").vocabulary
    shard = out / "train" / "shard-000000.tar"
    before = (shard.stat().st_ino, shard.stat().st_mtime_ns)
    hashes = _shard_hashes(out / "train")

    messages: list[str] = []
    build_cub(source, out, log=messages.append, **settings)
    assert len(messages) == 2 and all("up to date" in m for m in messages)
    assert (shard.stat().st_ino, shard.stat().st_mtime_ns) == before

    messages.clear()
    build_cub(source, out, log=messages.append, force=True, **settings)
    assert len(messages) == 2 and all("wrote" in m for m in messages)
    assert shard.stat().st_ino != before[0] and _shard_hashes(out / "train") == hashes

    messages.clear()  # an edited caption changes the identity
    captions = source / "text_testclasses.txt"
    captions.write_text(captions.read_text().replace("this", "This", 1))
    build_cub(source, out, log=messages.append, **settings)
    assert len(messages) == 2 and all("wrote" in m for m in messages)


def test_windows_line_endings_read_the_same(tmp_path):
    source = write_cub_release_fixture(tmp_path, 8, 1)
    expected = read_source(source)
    for name in ("text_trainvalclasses.txt", "text_testclasses.txt"):
        path = source / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert read_source(source).splits == expected.splits


# ---------------------------------------------------------------- bad input: file and line named


def _edit_line(path: Path, line: int, edit) -> None:
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[line - 1] = edit(lines[line - 1])
    path.write_text("\n".join(lines), encoding="utf-8")


def _truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def _first(folder: Path, pattern: str) -> Path:
    return sorted(folder.rglob(pattern))[0]


# Fixtures of 8 images: two classes of 4; 001 (image ids 1-4, train_idx.txt 0-3) is the train
# class, 002 (ids 5-8) the test class. Release: 40 lines in each caption file.
RELEASE_CASES = {
    "too few captions": (lambda s: (s / "text_trainvalclasses.txt").write_text(
                             "".join((s / "text_trainvalclasses.txt").read_text().splitlines(True)[:39])),
                         r"text_trainvalclasses\.txt:40: 39 captions for the 4 images of train/, expected 10 per "
                         r"image \(40\)"),
    "too many captions": (lambda s: (s / "text_testclasses.txt").write_text(
                              (s / "text_testclasses.txt").read_text() + "one more caption.\n"),
                          r"text_testclasses\.txt:41: 41 captions for the 4 images of test/"),
    "blank caption": (lambda s: _edit_line(s / "text_trainvalclasses.txt", 12, lambda l: "  "),
                      r"text_trainvalclasses\.txt:12: empty caption"),
    "class without images": (lambda s: (s / "train" / "009.Empty").mkdir(),
                             r"train/009\.Empty: class folder without images"),
    "not utf-8": (lambda s: (s / "text_testclasses.txt").write_bytes(b"ok\n\xff\n"),
                  r"text_testclasses\.txt:2: not UTF-8"),
    "truncated jpeg": (lambda s: _truncate(_first(s / "train", "*.jpg"), 200),
                       r"\.jpg: not a readable image .*listed at \S*text_trainvalclasses\.txt:1\)"),
}
CUB_2011_CASES = {
    "missing image": (lambda s: _first(s / "images", "*.jpg").unlink(),
                      r"\.jpg: missing image file \(listed at \S*train_idx\.txt:1\)"),
    "missing caption file": (lambda s: _first(s / "captions", "*.txt").unlink(),
                             r"\.txt: missing caption file \(image listed at \S*train_idx\.txt:1\)"),
    "nine captions": (lambda s: _first(s / "captions", "*.txt").write_text(
                          "".join(_first(s / "captions", "*.txt").read_text().splitlines(True)[:9])),
                      r"captions/001\.\S+\.txt:10: 9 captions, expected 10"),
    "names line malformed": (lambda s: _edit_line(s / "idx2name.txt", 3, lambda l: l + " extra"),
                             r"idx2name\.txt:3: expected '<image id> <class>/<image>\.jpg'"),
    "index not a number": (lambda s: _edit_line(s / "train_idx.txt", 2, lambda l: "two"),
                           r"train_idx\.txt:2: image index 'two' is not a non-negative integer"),
    "index out of range": (lambda s: _edit_line(s / "test_idx.txt", 1, lambda l: "8"),
                           r"test_idx\.txt:1: image index 8 is outside 0\.\.7"),
    "index in both lists": (lambda s: _edit_line(s / "test_idx.txt", 1, lambda l: "0"),
                            r"test_idx\.txt:1: image index 0 is listed again \(first in the train list, line 1\)"),
    "attribute line malformed": (lambda s: _edit_line(s / "attributes/image_attribute_labels.txt", 250,
                                                      lambda l: l.rsplit(" ", 2)[0]),
                                 r"image_attribute_labels\.txt:250: expected '<image id> <attribute id>"),
    "attribute value": (lambda s: _edit_line(s / "attributes/image_attribute_labels.txt", 251,
                                             lambda l: re.sub(r"^(\d+ \d+) \d", r"\1 2", l)),
                        r"image_attribute_labels\.txt:251: is_present is '2', expected 0 or 1"),
    "colour attribute missing": (lambda s: _edit_line(s / "attributes/image_attribute_labels.txt", 249,
                                                      lambda l: ""),
                                 r"image_attribute_labels\.txt: image id 1 lacks attribute 249 "
                                 r"\(has_primary_color::blue\)"),
    "dense labels short": (lambda s: (s / "attributes/image_attribute_labels.txt").unlink() or
                           _edit_line(s / "labels.txt", 2, lambda l: " ".join(l.split()[:200])),
                           r"labels\.txt:2: 200 columns, expected at least 263"),
}


@pytest.mark.parametrize("case", sorted(RELEASE_CASES))
def test_bad_release_input_fails_naming_file_and_line(case, tmp_path):
    source = write_cub_release_fixture(tmp_path / "in", 8, 1)
    damage, message = RELEASE_CASES[case]
    damage(source)
    _assert_fails(source, tmp_path / "out", message, decoding=case == "truncated jpeg")


@pytest.mark.parametrize("case", sorted(CUB_2011_CASES))
def test_bad_cub_200_2011_input_fails_naming_file_and_line(case, tmp_path):
    source = write_cub_200_2011_fixture(tmp_path / "in", 8, 1)
    damage, message = CUB_2011_CASES[case]
    damage(source)
    _assert_fails(source, tmp_path / "out", message, decoding=False)


def _assert_fails(source: Path, out: Path, message: str, decoding: bool) -> None:
    # Two workers where decoding finds the problem: the error crosses the process boundary intact.
    with pytest.raises(CUBError, match=message) as caught:
        build_cub(source, out, samples_per_shard=20, workers=2 if decoding else 1, **QUIET)
    assert "\n" not in str(caught.value)
    if decoding:
        assert not (out / "train").exists()
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    else:
        assert not out.exists(), "files were written before the input was checked"


def test_unknown_layout_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CUBError, match="neither CUB form"):
        read_source(tmp_path / "empty")
    (tmp_path / "x.zip").write_text("not a zip")
    with pytest.raises(CUBError, match="not a zip archive"):
        read_source(tmp_path / "x.zip")


def test_fixture_layouts_are_official(tmp_path, birds):
    release = write_cub_release_fixture(tmp_path / "r", IMAGES, SEED)
    assert sorted(p.name for p in release.iterdir()) == ["test", "text_testclasses.txt", "text_trainvalclasses.txt",
                                                         "train"]
    assert len((release / "text_trainvalclasses.txt").read_text().splitlines()) == 200
    cub = write_cub_200_2011_fixture(tmp_path / "c", IMAGES, SEED)
    first = (cub / "idx2name.txt").read_text().splitlines()[0]
    assert re.fullmatch(r"1 001\.Black_footed_Albatross/Black_Footed_Albatross_\d{4}_\d+\.jpg", first)
    assert (cub / "images.txt").read_text() == (cub / "idx2name.txt").read_text()
    lines = (cub / "attributes" / "image_attribute_labels.txt").read_text().splitlines()
    assert len(lines) == IMAGES * 312 and re.fullmatch(r"1 1 [01] [1-4] \d+\.\d{3}", lines[0])
    assert len((cub / "labels.txt").read_text().splitlines()[0].split()) == 312
    with Image.open(next((cub / "images").rglob("*.jpg"))) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
    # Both layouts hold the same image bytes.
    name = birds[0].name
    assert (release / "train" / name).read_bytes() == (cub / "images" / name).read_bytes() == birds[0].jpeg
