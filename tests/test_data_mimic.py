"""MIMIC-CXR from the official files: the FINDINGS section on report examples, the lowercased word
ids, both variants built from a fixture in the exact layout and counted against the fixture's own
ground truth (views, label cells, reports), the splits, restricted manifests read back through the
readers, reproducibility, reuse of an identical build, and one-line errors naming file and line."""

from __future__ import annotations

import gzip
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipelines.manifest import load_manifest
from data_pipelines.mimic import (
    CHEXPERT_LABELS,
    SPECIAL_TOKENS,
    THESIS_LABELS,
    VARIANTS,
    MIMICError,
    build_mimic,
    decode_text,
    extract_findings,
    load_image,
    modality_specs,
    preprocess,
    read_source,
    synthetic_subjects,
    write_mimic_fixture,
)
from data_pipelines.readers import EvalReader, TrainReader
from data_pipelines.shard_source import iterate_split
from data_pipelines.words import build_vocabulary, encode_tokens, word_tokenize

QUIET = {"progress": False, "log": lambda _: None}
SUBJECTS, SEED = 40, 5
SPLITS = ("train", "validate", "test")
MMVM_SIZE = 224


def _shard_hashes(split_dir: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(split_dir.glob("shard-*.tar"))]


def _all_hashes(out: Path) -> list[list[str]]:
    return [_shard_hashes(out / split) for split in SPLITS]


@pytest.fixture(scope="module")
def subjects():
    return synthetic_subjects(SUBJECTS, SEED)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_mimic_fixture(tmp_path_factory.mktemp("mimic") / "mimic-cxr-jpg", SUBJECTS, SEED)


@pytest.fixture(scope="module")
def thesis_shards(source, tmp_path_factory) -> Path:
    """Two decoding processes, shards of at most 16."""
    out = tmp_path_factory.mktemp("thesis") / "shards"
    build_mimic(source, out, variant="thesis", samples_per_shard=16, workers=2, **QUIET)
    return out


@pytest.fixture(scope="module")
def mmvm_shards(source, tmp_path_factory) -> Path:
    """One shard per split: none dropped, so every subject of a split shows in its samples."""
    out = tmp_path_factory.mktemp("mmvm") / "shards"
    build_mimic(source, out, variant="mmvm", samples_per_shard=1000, seed=3, workers=1, **QUIET)
    return out


# ---------------------------------------------------------------- ground truth, counted from the fixture


def _studies(subjects):
    return sorted((study for subject in subjects for study in subject.studies),
                  key=lambda study: (study.subject_id, study.study_id))


def _by_dicom(images, views):
    return sorted((image for image in images if image.view in views), key=lambda image: image.dicom_id)


def _expected_thesis(subjects):
    """{split: [(study, frontal, lateral, labels)]} and the skipped counts, from the fixture's truth."""
    kept, skipped = {split: [] for split in SPLITS}, Counter()
    for study in _studies(subjects):
        pa, lateral = _by_dicom(study.images, ("PA",)), _by_dicom(study.images, ("LATERAL", "LL"))
        if not pa:
            skipped["no_frontal"] += 1
        elif not lateral:
            skipped["no_lateral"] += 1
        elif not study.has_label_row:
            skipped["no_labels"] += 1
        elif any(study.cell(label) == "-1.0" for label in THESIS_LABELS):
            skipped["uncertain_labels"] += 1
        elif study.findings is None:
            skipped["no_findings"] += 1
        else:
            labels = [int(study.cell(label) == "1.0") for label in THESIS_LABELS]
            kept[study.split].append((study, pa[0], lateral[0], labels))
    return kept, skipped


def _expected_mmvm(subjects):
    """[(study, pairs, labels)] over all kept studies, and the skipped counts."""
    kept, skipped = [], Counter()
    for study in _studies(subjects):
        frontal, lateral = _by_dicom(study.images, ("AP", "PA")), _by_dicom(study.images, ("LATERAL", "LL"))
        if not frontal:
            skipped["no_frontal"] += 1
        elif not lateral:
            skipped["no_lateral"] += 1
        elif not study.has_label_row:
            skipped["no_labels"] += 1
        else:
            pairs = [(f, l) for f in frontal for l in lateral]
            kept.append((study, pairs, [int(cell == "1.0") for cell in study.label_cells]))
    return kept, skipped


def _image_of(source: Path, study, image, size: int) -> np.ndarray:
    return load_image(source / study.folder / f"{image.dicom_id}.jpg", "here", size)


# ---------------------------------------------------------------- the findings section


REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 
 INDICATION:  ___F with new onset ascites  // eval for infection
 
 TECHNIQUE:  Chest PA and lateral
 
 COMPARISON:  None.
 
 FINDINGS: 
 
 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.  Clips project over the left lung.
 
 IMPRESSION: 
 
 No acute cardiopulmonary process.
"""

REPORTS = {
    "standard": (REPORT, "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular "
                         "opacities that most likely represent nipple shadows. The cardiomediastinal silhouette is "
                         "normal. Clips project over the left lung."),
    "inline, then recommendations": (
        " WET READ: ___ ___ 4:12 PM\n  No pneumothorax.\n \n                 FINAL REPORT\n"
        " FINDINGS:  Endotracheal tube tip is 5 cm above the carina.  Nasogastric tube\n"
        " courses below the diaphragm.  IMPRESSION: in the text is not a header.\n"
        " RECOMMENDATION(S):  Follow-up radiograph.\n NOTIFICATION:  Discussed at 2:30 PM.\n",
        "Endotracheal tube tip is 5 cm above the carina. Nasogastric tube courses below the diaphragm. "
        "IMPRESSION: in the text is not a header."),
    "notification next": (" FINDINGS:\n Small left effusion.\n NOTIFICATION:  Dr. ___ was paged.\n",
                          "Small left effusion."),
    "findings last": ("EXAMINATION: CHEST\nFINDINGS:\n\tLungs are clear.\n\n", "Lungs are clear."),
    "impression only": (" EXAMINATION:  CHEST (PORTABLE AP)\n \n IMPRESSION:  Lungs are clear.\n", None),
    "findings and impression": (" FINDINGS AND IMPRESSION:  Lungs are clear.\n", None),
    "empty findings": (" FINDINGS:\n \n IMPRESSION:  Lungs are clear.\n", None),
    "lower-case findings": (" Findings: lungs are clear.\n findings: none\n", None),
    "empty report": ("", None),
}


@pytest.mark.parametrize("case", sorted(REPORTS))
def test_findings_section_on_report_examples(case):
    report, expected = REPORTS[case]
    assert extract_findings(report) == expected


def test_fixture_reports_give_the_fixture_findings(subjects):
    studies = _studies(subjects)
    assert any(s.findings is None for s in studies) and any(s.findings for s in studies)
    for study in studies:
        assert extract_findings(study.report) == study.findings


# ---------------------------------------------------------------- words


def test_mimic_words_are_lowercased_tokens():
    findings = ("PA and lateral views. There is no focal consolidation, pleural effusion or pneumothorax. "
                "1. No acute process. The ___ catheter's tip is in the SVC.")
    assert word_tokenize(findings, lowercase=True) == [
        "pa", "and", "lateral", "views", ".", "there", "is", "no", "focal", "consolidation", ",", "pleural",
        "effusion", "or", "pneumothorax", ".", "1", ".", "no", "acute", "process", ".", "the", "___", "catheter",
        "'s", "tip", "is", "in", "the", "svc", "."]
    # Tokenized first, then lowercased: "1. No" ends a sentence, "1. no" would not.
    assert word_tokenize("1. No acute process.", lowercase=True) != word_tokenize("1. no acute process.")
    assert word_tokenize("The Heart.") == ["The", "Heart", "."]  # CUB's default keeps the case


def test_mimic_vocabulary_and_ids(thesis_shards, subjects):
    kept, _ = _expected_thesis(subjects)
    tokens = [word_tokenize(study.findings, lowercase=True) for study, *_ in kept["train"]]
    counts = Counter(word for words in tokens for word in words)
    expected = tuple(dict.fromkeys(w for words in tokens for w in words if counts[w] > 3))
    text = load_manifest(thesis_shards / "train").modality("text")
    assert text.vocabulary[:3] == SPECIAL_TOKENS == ("<exc>", "<pad>", "<eos>")
    assert text.vocabulary == SPECIAL_TOKENS + expected
    assert all(word == word.lower() for word in text.vocabulary)
    assert (text.shape, text.dtype, text.likelihood) == ((128,), "uint16", "categorical")
    for split in SPLITS:
        assert load_manifest(thesis_shards / split).modality("text").vocabulary == text.vocabulary
    # A word counted exactly 4 times is in, 3 times out (count > 3).
    assert build_vocabulary([["a"] * 4, ["b"] * 3]) == SPECIAL_TOKENS + ("a",)
    id_of = {w: i for i, w in enumerate(text.vocabulary)}
    long = encode_tokens(["the"] * 200, id_of, 128)
    assert long.shape == (128,) and long[:127].tolist() == [id_of["the"]] * 127 and long[127] == 2
    short = encode_tokens(["the", "zebra"], id_of, 128)
    assert short[:3].tolist() == [id_of["the"], 0, 2] and set(short[3:].tolist()) == {1}
    assert decode_text(short, text.vocabulary) == "the <exc>"


# ---------------------------------------------------------------- images


def test_image_is_the_centre_square_resized(tmp_path):
    pixels = np.full((60, 100, 3), 255, dtype=np.uint8)
    pixels[:, 20:80] = 0  # a black centre square between white margins of 20 px
    result = preprocess(Image.fromarray(pixels), 16)
    assert result.dtype == np.uint8 and result.shape == (1, 16, 16) and result.max() == 0
    tall = np.zeros((101, 40), dtype=np.uint8)
    tall[30:70] = 200  # rows 30..69 are the centre square of a 40 x 101 image (top offset 30)
    assert preprocess(Image.fromarray(tall), 8).min() == 200
    same = Image.fromarray(tall[30:70]).resize((8, 8), Image.Resampling.LANCZOS)
    assert np.array_equal(preprocess(Image.fromarray(tall), 8)[0], np.asarray(same))


# ---------------------------------------------------------------- the builds, against the fixture's truth


def test_thesis_build_has_the_expected_samples(source, thesis_shards, subjects):
    kept, skipped = _expected_thesis(subjects)
    assert all(skipped[reason] > 0 for reason in VARIANTS["thesis"].skip_reasons)  # the fixture covers each
    for split in SPLITS:
        manifest = load_manifest(thesis_shards / split)
        assert (manifest.dataset, manifest.split, manifest.label_kind, manifest.label_names) == (
            "mimic", split, "multi", THESIS_LABELS)
        assert manifest.restricted and manifest.seed is None
        assert manifest.builder["skipped"] == {reason: skipped[reason] for reason in VARIANTS["thesis"].skip_reasons}
        assert manifest.num_samples + manifest.dropped_samples == len(kept[split])
        frontal, lateral, text = manifest.modalities
        assert [(m.name, m.shape, m.dtype, m.likelihood) for m in (frontal, lateral)] == [
            ("frontal", (1, 128, 128), "uint8", "laplace"), ("lateral", (1, 128, 128), "uint8", "laplace")]
        id_of = {w: i for i, w in enumerate(text.vocabulary)}
        for sample, (study, pa, side, labels) in zip(iterate_split(thesis_shards / split), kept[split]):
            assert sample.label.tolist() == labels
            assert np.array_equal(sample.arrays["frontal"], _image_of(source, study, pa, 128))
            assert np.array_equal(sample.arrays["lateral"], _image_of(source, study, side, 128))
            expected = encode_tokens(word_tokenize(study.findings, lowercase=True), id_of, 128)
            assert sample.arrays["text"].tolist() == expected.tolist()
    # The split follows the split file: every kept study in the folder of its official split.
    assert {study.split for split in SPLITS for study, *_ in kept[split]} == set(SPLITS)


def test_mmvm_build_pairs_every_frontal_with_every_lateral(source, mmvm_shards, subjects):
    kept, skipped = _expected_mmvm(subjects)
    assert any(len(pairs) > 1 for _, pairs, _ in kept)
    # Each sample's study, recognised by its frontal image (every fixture image is unique).
    study_of = {}
    for study, pairs, _ in kept:
        for frontal, _ in pairs:
            study_of[_image_of(source, study, frontal, MMVM_SIZE).tobytes()] = study.study_id
    expected_samples = {study.study_id: (study, pairs, labels) for study, pairs, labels in kept}
    subjects_of_split, seen_samples = {}, 0
    for split in SPLITS:
        manifest = load_manifest(mmvm_shards / split)
        assert manifest.label_names == CHEXPERT_LABELS and manifest.restricted and manifest.seed == 3
        assert manifest.builder["skipped"] == {reason: skipped[reason] for reason in ("no_frontal", "no_lateral",
                                                                                      "no_labels")}
        assert [(m.name, m.shape) for m in manifest.modalities] == [("frontal", (1, MMVM_SIZE, MMVM_SIZE)),
                                                                    ("lateral", (1, MMVM_SIZE, MMVM_SIZE))]
        samples = list(iterate_split(mmvm_shards / split))
        order = [study_of[s.arrays["frontal"].tobytes()] for s in samples]
        studies = list(dict.fromkeys(order))
        subjects_of_split[split] = {expected_samples[s][0].subject_id for s in studies}
        # Studies in (subject, study) order, each with its pairs frontal-major, by dicom_id.
        assert studies == sorted(studies, key=lambda s: (expected_samples[s][0].subject_id, s))
        position = 0
        for study_id in studies:
            study, pairs, labels = expected_samples[study_id]
            for frontal, side in pairs[: len(samples) - position]:
                sample = samples[position]
                assert np.array_equal(sample.arrays["frontal"], _image_of(source, study, frontal, MMVM_SIZE))
                assert np.array_equal(sample.arrays["lateral"], _image_of(source, study, side, MMVM_SIZE))
                assert sample.label.tolist() == labels  # 1.0 positive; 0.0, -1.0 and empty negative
                position += 1
        assert position == len(samples)
        in_split = [s for s in expected_samples.values() if s[0].subject_id in subjects_of_split[split]]
        assert manifest.dropped_samples == 0 and manifest.num_samples == sum(len(pairs) for _, pairs, _ in in_split)
        seen_samples += manifest.num_samples
    assert seen_samples == sum(len(pairs) for _, pairs, _ in kept)
    # No subject in two splits; all subjects with samples in one; about 80/10/10.
    train, validate, test = (subjects_of_split[split] for split in SPLITS)
    assert not (train & validate or train & test or validate & test)
    everyone = {study.subject_id for study, _, _ in kept}
    assert train | validate | test == everyone
    assert len(validate) == len(test) == round(0.1 * len(everyone))


def test_subject_split_is_seeded(source, mmvm_shards, tmp_path):
    small = {"image_size": 16, "samples_per_shard": 1000, "workers": 1, **QUIET}
    first = build_mimic(source, tmp_path / "a", variant="mmvm", seed=3, **small)
    again = build_mimic(source, tmp_path / "b", variant="mmvm", seed=3, **small)
    other = build_mimic(source, tmp_path / "c", variant="mmvm", seed=4, **small)
    sizes = {name: [m[split].num_samples + m[split].dropped_samples for split in SPLITS]
             for name, m in (("first", first), ("again", again), ("other", other))}
    assert _all_hashes(tmp_path / "a") == _all_hashes(tmp_path / "b")
    assert sizes["first"] == [load_manifest(mmvm_shards / s).num_samples + load_manifest(mmvm_shards / s).dropped_samples
                              for s in SPLITS]
    assert _all_hashes(tmp_path / "a") != _all_hashes(tmp_path / "c")
    assert other["train"].seed == 4 and other["train"].builder["split"]["seed"] == 4


def test_builds_read_back_through_the_readers(thesis_shards, mmvm_shards):
    batch = next(iter(EvalReader(thesis_shards / "test", batch_size=4, rank=0, world_size=1)))
    assert batch.inputs["frontal"].shape == (4, 1, 128, 128) and batch.inputs["frontal"].dtype == torch.float32
    assert batch.inputs["lateral"].shape == (4, 1, 128, 128)
    assert batch.inputs["text"].shape == (4, 128) and batch.inputs["text"].dtype == torch.int64
    assert batch.labels.shape == (4, 3) and batch.labels.dtype == torch.float32
    train = next(iter(TrainReader(thesis_shards / "train", batch_size=8, steps_per_epoch=1, seed=0, rank=0,
                                  world_size=1, shuffle_buffer=10)))
    assert train.inputs["text"].shape == (8, 128) and 0 <= train.inputs["frontal"].min() <= 1
    pairs = next(iter(TrainReader(mmvm_shards / "train", batch_size=8, steps_per_epoch=1, seed=0, rank=0,
                                  world_size=1, shuffle_buffer=10)))
    assert set(pairs.inputs) == {"frontal", "lateral"} and pairs.inputs["lateral"].shape == (8, 1, 224, 224)
    assert pairs.labels.shape == (8, 14)


def test_fixture_labels_leave_traces(thesis_shards):
    """A bright band at the lung bases and the words of the effusion phrase go with Pleural Effusion."""
    samples = list(iterate_split(thesis_shards / "train"))
    vocabulary = load_manifest(thesis_shards / "train").modality("text").vocabulary
    effusion = np.array([s.label[THESIS_LABELS.index("Pleural Effusion")] for s in samples], dtype=bool)
    assert 0 < effusion.sum() < len(samples)
    bases = np.array([s.arrays["frontal"][0, 88:100, 30:98].mean() for s in samples])
    assert bases[effusion].min() > bases[~effusion].max()
    says = np.array(["effusion is present" in decode_text(s.arrays["text"], vocabulary) for s in samples])
    assert np.array_equal(says, effusion)


# ---------------------------------------------------------------- reproducibility, reuse, file forms


def test_build_is_bit_reproducible_across_worker_counts(source, thesis_shards, tmp_path):
    build_mimic(source, tmp_path / "again", variant="thesis", samples_per_shard=16, workers=1, **QUIET)
    for split in SPLITS:
        assert _shard_hashes(tmp_path / "again" / split) == _shard_hashes(thesis_shards / split)
        assert (tmp_path / "again" / split / "manifest.json").read_bytes() == (
            thesis_shards / split / "manifest.json").read_bytes()


def test_identical_build_is_left_alone_and_force_or_changes_rebuild(tmp_path, subjects):
    source = write_mimic_fixture(tmp_path / "src", SUBJECTS, SEED)
    out = tmp_path / "out"
    settings = {"variant": "thesis", "samples_per_shard": 8, "limit": 3, "workers": 1, "progress": False}
    manifests = build_mimic(source, out, log=lambda _: None, **settings)
    assert [manifests[split].num_samples for split in SPLITS] == [3, 3, 3]
    assert manifests["train"].builder["studies"]["used"] == 3
    shard = out / "train" / "shard-000000.tar"
    before = (shard.stat().st_ino, shard.stat().st_mtime_ns)
    hashes = _all_hashes(out)

    messages: list[str] = []
    build_mimic(source, out, log=messages.append, **settings)
    assert len(messages) == 4 and all("up to date" in m for m in messages[1:])
    assert (shard.stat().st_ino, shard.stat().st_mtime_ns) == before

    messages.clear()
    build_mimic(source, out, log=messages.append, force=True, **settings)
    assert sum("wrote" in m for m in messages) == 3
    assert shard.stat().st_ino != before[0] and _all_hashes(out) == hashes

    messages.clear()  # an edited report changes the identity (its findings feed the vocabulary)
    study = _expected_thesis(subjects)[0]["test"][0][0]
    report = source / f"{study.folder}.txt"
    report.write_text(report.read_text().replace("FINDINGS:", "FINDINGS:  Trace atelectasis.", 1))
    build_mimic(source, out, log=messages.append, **settings)
    assert sum("wrote" in m for m in messages) == 3


def test_csv_and_csv_gz_read_alike(source, thesis_shards, tmp_path):
    plain = write_mimic_fixture(tmp_path / "plain", SUBJECTS, SEED, gzip_csvs=False)
    assert sorted(p.name for p in plain.glob("*.csv")) == [
        "mimic-cxr-2.0.0-chexpert.csv", "mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-split.csv"]
    for ours, theirs in zip(read_source(plain).studies, read_source(source).studies, strict=True):
        assert (ours.study_id, ours.images, ours.split) == (theirs.study_id, theirs.images, theirs.split)
        assert np.array_equal(ours.labels, theirs.labels, equal_nan=True) if ours.labels is not None else \
            theirs.labels is None
    assert read_source(plain).csv_digests == read_source(source).csv_digests
    build_mimic(plain, tmp_path / "out", variant="thesis", samples_per_shard=16, workers=1, **QUIET)
    assert _all_hashes(tmp_path / "out") == _all_hashes(thesis_shards)
    # Both forms at once: which one is meant is unclear.
    (plain / "mimic-cxr-2.0.0-split.csv.gz").write_bytes(gzip.compress(b"x"))
    with pytest.raises(MIMICError, match=r"mimic-cxr-2\.0\.0-split\.csv\.gz: both .* exist"):
        read_source(plain)


def test_reports_in_a_separate_folder(thesis_shards, tmp_path):
    source = write_mimic_fixture(tmp_path / "jpg", SUBJECTS, SEED, reports_root=tmp_path / "reports")
    assert not list((source / "files").rglob("*.txt"))
    build_mimic(source, tmp_path / "out", variant="thesis", reports=tmp_path / "reports", samples_per_shard=16,
                workers=1, **QUIET)
    assert _all_hashes(tmp_path / "out") == _all_hashes(thesis_shards)
    # MMVM's variant reads no report at all.
    build_mimic(source, tmp_path / "pairs", variant="mmvm", image_size=16, workers=1, **QUIET)
    with pytest.raises(MIMICError, match=r"s\d{8}\.txt: missing report of study \d+ \(listed at \S*metadata"
                                         r"\.csv\.gz:\d+; .*--reports\)"):
        build_mimic(source, tmp_path / "none", variant="thesis", workers=1, **QUIET)
    assert not (tmp_path / "none").exists()


def test_log_and_errors_never_show_report_text(source, tmp_path, subjects):
    messages: list[str] = []
    build_mimic(source, tmp_path / "out", variant="thesis", samples_per_shard=16, workers=1, progress=False,
                log=messages.append)
    sentences = {sentence for s in _studies(subjects) if s.findings for sentence in s.findings.split(". ")
                 if len(sentence) > 12}
    assert len(messages) == 4 and not any(sentence in message for message in messages for sentence in sentences)


def test_modality_specs_and_arguments():
    assert [s.name for s in modality_specs("thesis")] == ["frontal", "lateral", "text"]
    assert [s.shape for s in modality_specs("mmvm", image_size=64)] == [(1, 64, 64), (1, 64, 64)]
    assert modality_specs("mmvm")[0].shape == (1, 224, 224)
    with pytest.raises(ValueError, match="variant is 'x', expected one of"):
        modality_specs("x")
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        build_mimic("/nonexistent", "/nonexistent", variant="mmvm", image_size=0)


# ---------------------------------------------------------------- bad input: file and line named


def _edit_csv(path: Path, edit) -> None:
    """Apply ``edit`` to the lines of a CSV, gzipped or not."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    lines = edit(data.decode().split("\n"))
    data = "\n".join(lines).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def _replace_line(number: int, change):
    def edit(lines):
        lines[number - 1] = change(lines[number - 1])
        return lines
    return edit


METADATA, CHEXPERT, SPLIT = (f"mimic-cxr-2.0.0-{name}.csv.gz" for name in ("metadata", "chexpert", "split"))


def _first_image(source: Path) -> Path:
    line = gzip.decompress((source / METADATA).read_bytes()).decode().split("\n")[1].split(",")
    dicom_id, subject, study = line[:3]
    return source / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg"


BAD_INPUT = {
    "missing metadata file": (lambda s: (s / METADATA).unlink(),
                              r"mimic-cxr-2\.0\.0-metadata\.csv\.gz: missing file"),
    "missing column": (lambda s: _edit_csv(s / CHEXPERT, _replace_line(1, lambda l: l.replace("Edema", "Oedema"))),
                       r"chexpert\.csv\.gz:1: missing column 'Edema'"),
    "bad label value": (lambda s: _edit_csv(s / CHEXPERT, _replace_line(3, lambda l: l[: l.rindex(",")] + ",2.0")),
                        r"chexpert\.csv\.gz:3: column 'Support Devices' is not 1\.0, 0\.0, -1\.0 or empty"),
    "malformed line": (lambda s: _edit_csv(s / METADATA, _replace_line(4, lambda l: l + ",extra")),
                       r"metadata\.csv\.gz:4: 13 fields, the header \(line 1\) has 12"),
    "unterminated quote": (lambda s: _edit_csv(s / SPLIT, _replace_line(5, lambda l: l.replace(",", ',"', 1))),
                           r"split\.csv\.gz:5: malformed CSV"),
    "duplicate dicom_id": (lambda s: _edit_csv(s / METADATA, lambda lines: lines[:3] + [lines[2]] + lines[3:]),
                           r"metadata\.csv\.gz:4: dicom_id \S+ is listed again \(first at line 3\)"),
    "bad split value": (lambda s: _edit_csv(s / SPLIT, _replace_line(2, lambda l: l.replace("train", "val"))),
                        r"split\.csv\.gz:2: column 'split' is not one of train, validate, test"),
    "image not in the split file": (lambda s: _edit_csv(s / SPLIT, lambda lines: lines[:1] + lines[2:]),
                                    r"metadata\.csv\.gz:2: dicom_id \S+ has no row in \S*split\.csv\.gz"),
    "missing image": (lambda s: _first_image(s).unlink(),
                      r"\.jpg: missing image file \(listed at \S*metadata\.csv\.gz:2\)"),
    "truncated jpeg": (lambda s: _first_image(s).write_bytes(_first_image(s).read_bytes()[:300]),
                       r"\.jpg: not a readable image .*listed at \S*metadata\.csv\.gz:2\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_fails_naming_file_and_line(case, tmp_path):
    source = write_mimic_fixture(tmp_path / "in", 10, 1)
    damage, message = BAD_INPUT[case]
    damage(source)
    decoding = case == "truncated jpeg"
    out = tmp_path / "out"
    # Two workers where decoding finds the problem: the error crosses the process boundary intact.
    with pytest.raises(MIMICError, match=message) as caught:
        build_mimic(source, out, variant="thesis", samples_per_shard=8, workers=2 if decoding else 1, **QUIET)
    assert "\n" not in str(caught.value)
    if decoding:
        assert not (out / "train").exists()
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    else:
        assert not out.exists(), "files were written before the input was checked"


def test_bad_label_value_is_not_repeated(tmp_path):
    source = write_mimic_fixture(tmp_path / "in", 10, 1, gzip_csvs=False)
    _edit_csv(source / "mimic-cxr-2.0.0-chexpert.csv", _replace_line(2, lambda l: l[: l.rindex(",")] + ",secret"))
    with pytest.raises(MIMICError) as caught:
        read_source(source)
    assert "secret" not in str(caught.value) and "chexpert.csv:2:" in str(caught.value)


def test_fixture_layout_is_official(source, subjects):
    assert sorted(p.name for p in source.iterdir()) == ["files", CHEXPERT, METADATA, SPLIT]
    header = gzip.decompress((source / METADATA).read_bytes()).decode().split("\n")[0]
    assert header.startswith("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,"
                             "Columns")
    assert gzip.decompress((source / CHEXPERT).read_bytes()).decode().split("\n")[0] == ",".join(
        ("subject_id", "study_id", *CHEXPERT_LABELS))
    study = subjects[0].studies[0]
    image = study.images[0]
    path = source / f"files/p{str(study.subject_id)[:2]}/p{study.subject_id}/s{study.study_id}/{image.dicom_id}.jpg"
    with Image.open(path) as opened:
        assert opened.format == "JPEG" and opened.mode == "L" and opened.size == (image.width, image.height)
    assert (source / f"files/p{str(study.subject_id)[:2]}/p{study.subject_id}/s{study.study_id}.txt").is_file()
    views = Counter(image.view for s in _studies(subjects) for image in s.images)
    assert {"PA", "AP", "LATERAL", "LL"} <= set(views)
    cells = Counter(cell for s in _studies(subjects) for cell in s.label_cells)
    assert {"1.0", "0.0", "-1.0", ""} <= set(cells)
    assert any(len(subject.studies) > 1 for subject in subjects)
    assert len({(i.width, i.height) for s in _studies(subjects) for i in s.images}) > 10


def test_package_exports_load_lazily():
    import subprocess
    import sys

    import data_pipelines.mimic as mimic

    assert sorted(mimic.__all__) == sorted(mimic._EXPORTS) and all(getattr(mimic, name) for name in mimic.__all__)
    # The image workers and the fixture writer import the package without the shard writer (torch, webdataset).
    code = ("import sys, data_pipelines.mimic.image, data_pipelines.mimic.fixture, data_pipelines.mimic.report; "
            "assert not {'torch', 'webdataset'} & set(sys.modules), sorted({'torch', 'webdataset'} & set(sys.modules))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
