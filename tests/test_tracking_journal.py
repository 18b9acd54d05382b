"""The offline journal (mmplatform.tracking.journal) on its own: what is appended is what is read
back, a crash can tear only the last line, and replays are recorded per repo."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmplatform.tracking.journal import Journal, iter_journals, mark_replayed, read_journal
from mmplatform.tracking.steps import context_key

HEADER = {"repo": "aim://127.0.0.1:1", "experiment": "exp", "hparams": {"aggregator": "mopoe"}, "run_name": "r"}
CONTEXT = {"split": "test", "kind": "missing"}


def written_journal(directory) -> Journal:
    journal = Journal(directory, "abc123")
    journal.open(HEADER)
    journal.append({"kind": "metric", "name": "coherence", "context": CONTEXT, "step": 1, "value": 0.25})
    journal.append({"kind": "metric", "name": "coherence", "context": CONTEXT, "step": 2, "value": float("nan")})
    image = Image.fromarray(np.full((4, 5, 3), 200, dtype=np.uint8))
    path = journal.save_image(image, "gen/m0", 2, {"modality": "m0"})
    journal.append({"kind": "image", "name": "gen/m0", "context": {"modality": "m0"}, "step": 2, "path": path})
    journal.append({"kind": "text", "name": "captions", "context": {}, "step": 2, "value": "a bird"})
    journal.append({"kind": "unavailable", "reason": "ConnectionRefusedError"})
    journal.append({"kind": "summary", "value": {"status": "finished"}})
    journal.close()
    return journal


def test_what_is_appended_is_read_back_in_order(tmp_path):
    journal = written_journal(tmp_path)
    contents = read_journal(journal.path)
    assert contents.run_hash == "abc123" and contents.header["experiment"] == "exp"
    assert [(r["kind"], r.get("step")) for r in contents.records] == [
        ("metric", 1), ("metric", 2), ("image", 2), ("text", 2), ("summary", None)
    ]
    assert np.isnan(contents.records[1]["value"])  # NaN survives the JSON line
    assert [u["reason"] for u in contents.unavailable] == ["ConnectionRefusedError"]
    with Image.open(tmp_path / contents.records[2]["path"]) as image:
        assert image.getpixel((0, 0)) == (200, 200, 200)
    assert contents.recorded_steps() == {
        ("coherence", context_key(CONTEXT)): {1, 2},
        ("gen/m0", context_key({"modality": "m0"})): {2},
        ("captions", "{}"): {2},
    }
    assert list(iter_journals(tmp_path)) == [journal.path]


def test_reopening_appends_without_a_second_header(tmp_path):
    written_journal(tmp_path)
    again = Journal(tmp_path, "abc123")
    again.open({**HEADER, "experiment": "other"})
    again.append({"kind": "metric", "name": "coherence", "context": CONTEXT, "step": 3, "value": 0.5})
    again.close()
    contents = read_journal(again.path)
    assert contents.header["experiment"] == "exp"
    assert [r["step"] for r in contents.records if r["kind"] == "metric"] == [1, 2, 3]


def test_a_torn_last_line_costs_one_record_and_a_torn_middle_line_names_the_line(tmp_path):
    journal = written_journal(tmp_path)
    with journal.path.open("a") as file:
        file.write('{"kind": "metric", "name": "coh')  # the process died mid-write
    assert len(read_journal(journal.path).records) == 5

    lines = journal.path.read_text().splitlines()
    lines[2] = lines[2][:10]
    journal.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"^{journal.path}:3: not a JSON line$"):
        read_journal(journal.path)


def test_a_journal_must_start_with_its_header(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"kind": "metric", "name": "a", "context": {}, "step": 0, "value": 1}\n')
    with pytest.raises(ValueError, match="first line is 'metric', not the header"):
        read_journal(path)
    path.write_text("")
    with pytest.raises(ValueError, match="empty journal"):
        read_journal(path)


def test_replays_are_recorded_per_repo_and_the_latest_wins(tmp_path):
    journal = written_journal(tmp_path)
    mark_replayed(journal.path, "/repos/a", "run1")
    mark_replayed(journal.path, "aim://host:53800", "run2")
    mark_replayed(journal.path, "/repos/a", "run3")
    contents = read_journal(journal.path)
    assert contents.replayed == {"/repos/a": "run3", "aim://host:53800": "run2"}
    assert len(contents.records) == 5  # replay marks are not records to push


def test_delete_removes_the_journal_and_its_images(tmp_path):
    journal = written_journal(tmp_path)
    assert (tmp_path / "abc123" / "images").is_dir()
    journal.delete()
    assert list(tmp_path.iterdir()) == []
