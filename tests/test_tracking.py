"""Aim tracking against real Aim: local repos, and `aim server` on free loopback ports.

Runs are read back the way analysis reads them: reindex, then AimQL. Failure cases use a
real closed port, a real silent listener, and real servers that are killed (SIGKILL) or
frozen (SIGSTOP) mid-run.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from mmplatform.tracking import (
    RemoteTrackingWarning,
    RemoteUnavailable,
    Tracker,
    query_images,
    query_metrics,
    query_runs,
    reindex,
    replay_fallback,
)
from mmplatform.tracking.images import to_pil
from mmplatform.tracking.journal import iter_journals, read_journal
from tests.aim_fixtures import free_port

HPARAMS = {"aggregator": "mopoe", "model.beta": 1.0, "sweep": "polymnist", "trial_id": "t0"}
MISSING = {"subset": "m0_m1", "modality": "m2", "split": "test", "kind": "missing"}
RECONSTRUCTION = {**MISSING, "kind": "reconstruction"}
IMAGE_CONTEXT = {"subset": "m0", "split": "test"}
HANG_GUARD_S = 30.0
"""Only catches hangs (Aim's own waits are 30 s to forever); not a speed target."""


@pytest.fixture(scope="session")
def local_repo(tmp_path_factory) -> str:
    """One local repo for the module: creating one costs seconds (Aim migrates its SQL
    database), and tests keep apart by experiment name anyway."""
    return str(tmp_path_factory.mktemp("local_aim") / "aim")


def sample_image() -> Image.Image:
    pixels = (np.arange(8 * 12 * 3, dtype=np.uint32).reshape(8, 12, 3) * 7 % 256).astype(np.uint8)
    return Image.fromarray(pixels)


def unique_experiment(request) -> str:
    # The session server is shared: each test queries only its own experiment.
    return f"exp-{request.node.name}-{time.monotonic_ns()}"


def log_two_epochs(tracker: Tracker) -> None:
    assert tracker.track_many({"coherence": 0.25, "loss": 3.0}, 0, MISSING) == 2
    assert tracker.track(0.5, "coherence", 1, MISSING) is True
    assert tracker.track(2.0, "loss", 1, MISSING) is True
    assert tracker.track(0.9, "coherence", 1, RECONSTRUCTION) is True
    assert tracker.track_image(sample_image(), "samples", 1, IMAGE_CONTEXT) is True
    tracker.set_summary({"best_coherence": 0.5, "epochs": 2})


def check_two_epochs(repo: str, run_hash: str, experiment: str) -> None:
    in_experiment = f'run.experiment == "{experiment}"'
    runs = query_runs(repo, f'run.hparams.aggregator == "mopoe" and {in_experiment}')
    assert [run.run_hash for run in runs] == [run_hash]
    assert runs[0].hparams == HPARAMS
    assert runs[0].summary == {"best_coherence": 0.5, "epochs": 2}
    # Flattened (dotted) hparams are queryable too.
    assert [run.run_hash for run in query_runs(repo, f'run.hparams["model.beta"] == 1.0 and {in_experiment}')] == [
        run_hash
    ]

    missing = query_metrics(
        repo,
        f'run.hparams.aggregator == "mopoe" and {in_experiment} and metric.name == "coherence" '
        'and metric.context.subset == "m0_m1" and metric.context.kind == "missing"',
    )
    assert [(series.run_hash, series.context, series.steps, series.values) for series in missing] == [
        (run_hash, MISSING, [0, 1], [0.25, 0.5])
    ]
    reconstruction = query_metrics(
        repo, f'{in_experiment} and metric.name == "coherence" and metric.context.kind == "reconstruction"'
    )
    assert [(series.steps, series.values) for series in reconstruction] == [([1], [0.9])]
    loss = query_metrics(repo, f'{in_experiment} and metric.name == "loss"')
    assert [(series.steps, series.values) for series in loss] == [([0, 1], [3.0, 2.0])]

    images = query_images(repo, f'{in_experiment} and images.name == "samples"')
    assert [(series.context, series.steps) for series in images] == [(IMAGE_CONTEXT, [1])]
    np.testing.assert_array_equal(np.asarray(images[0].values[0].convert("RGB")), np.asarray(sample_image()))


def check_steps(repo: str, experiment: str, name: str, context: dict) -> list[tuple[str, list[int], list[float]]]:
    series = query_metrics(repo, f'run.experiment == "{experiment}" and metric.name == "{name}"')
    return [(s.run_hash, s.steps, s.values) for s in series if s.context == context]


# ------------------------------------------------------------------ pure helpers


def test_to_pil_reads_chw_float_grids():
    torch = pytest.importorskip("torch")
    grid = torch.zeros(3, 4, 6)
    grid[0, 1, 2] = 1.0  # red pixel at row 1, column 2
    grid[2, 3, 5] = 2.0  # out of range: clipped to full blue
    image = to_pil(grid)
    assert image.size == (6, 4) and image.mode == "RGB"
    assert image.getpixel((2, 1)) == (255, 0, 0)
    assert image.getpixel((5, 3)) == (0, 0, 255)
    assert to_pil(np.zeros((1, 4, 6), dtype=np.float32)).mode == "L"


# ------------------------------------------------------------------ real repos


def test_local_repo_roundtrip(local_repo, tmp_path, request):
    repo, experiment = local_repo, unique_experiment(request)
    with Tracker(repo, experiment, hparams=HPARAMS, fallback_dir=tmp_path / "fallback") as tracker:
        log_two_epochs(tracker)
        assert tracker.journal_path is None  # a local repo is written directly
        run_hash = tracker.run_hash
    reindex(repo)
    check_two_epochs(repo, run_hash, experiment)


def test_a_context_key_some_series_lack_matches_quietly_and_real_query_errors_still_log(
    local_repo, tmp_path, request, caplog
):
    """Aim logs "query failed" for every series whose context lacks a key the query reads; such a
    series just does not match (mmplatform.tracking.query filters those lines). A query that fails
    for another reason (an attribute a string lacks) must still say so."""
    experiment = unique_experiment(request)
    tracker = Tracker(local_repo, experiment, hparams=HPARAMS, fallback_dir=tmp_path / "fallback")
    tracker.track(0.5, "coherence", 1, MISSING)
    tracker.track(0.4, "coherence", 1, {"split": "test", "kind": "missing"})  # no subset
    tracker.close()
    reindex(local_repo)
    with caplog.at_level("WARNING", logger="aim.storage.query"):
        found = query_metrics(local_repo, f'run.experiment == "{experiment}" and metric.context.subset == "m0_m1"')
    assert [series.context for series in found] == [MISSING]
    assert not [r for r in caplog.records if "query failed" in r.getMessage()]
    with caplog.at_level("WARNING", logger="aim.storage.query"):
        assert query_metrics(local_repo, f'run.experiment == "{experiment}" and metric.name.no_such_method()') == []
    assert [r for r in caplog.records if "query failed" in r.getMessage()]


def test_remote_roundtrip(aim_server, tmp_path, request):
    experiment = unique_experiment(request)
    with Tracker(aim_server.url, experiment, hparams=HPARAMS, fallback_dir=tmp_path / "fallback") as tracker:
        log_two_epochs(tracker)
        assert tracker.journal_path.exists()  # kept until the server confirms the run
        run_hash = tracker.run_hash
    assert not tracker.degraded
    assert list(iter_journals(tmp_path / "fallback")) == []  # confirmed by a clean close
    reindex(aim_server.url)
    check_two_epochs(aim_server.url, run_hash, experiment)


@pytest.mark.parametrize("where", ["local", "remote"])
def test_reattach_continues_the_run_without_duplicates(where, local_repo, aim_server, tmp_path, request):
    repo = local_repo if where == "local" else aim_server.url
    experiment = unique_experiment(request)
    with Tracker(repo, experiment, hparams=HPARAMS, fallback_dir=tmp_path / "fallback") as first:
        first.track(0.1, "coherence", 0, MISSING)
        first.track(0.2, "coherence", 1, MISSING)
        first.track(3.0, "loss", 0, MISSING)
        first.track_image(sample_image(), "samples", 0, IMAGE_CONTEXT)
        run_hash = first.run_hash

    with Tracker(repo, experiment, run_hash=run_hash, hparams=HPARAMS, fallback_dir=tmp_path / "fallback") as second:
        assert second.run_hash == run_hash
        assert second.track(0.99, "coherence", 1, MISSING) is False  # the retried epoch
        assert second.track(0.3, "coherence", 2, MISSING) is True
        assert second.track(2.0, "loss", 1, MISSING) is True  # per sequence: loss stopped at 0
        assert second.track_image(Image.new("RGB", (12, 8)), "samples", 0, IMAGE_CONTEXT) is False
        assert second.track_image(Image.new("RGB", (12, 8)), "samples", 1, IMAGE_CONTEXT) is True

    reindex(repo)
    assert [run.run_hash for run in query_runs(repo, f'run.experiment == "{experiment}"')] == [run_hash]
    # 0.2, not 0.99, at step 1: Aim itself would overwrite a step, so this is our dedupe.
    assert check_steps(repo, experiment, "coherence", MISSING) == [(run_hash, [0, 1, 2], [0.1, 0.2, 0.3])]
    assert check_steps(repo, experiment, "loss", MISSING) == [(run_hash, [0, 1], [3.0, 2.0])]
    (images,) = query_images(repo, f'run.experiment == "{experiment}" and images.name == "samples"')
    assert images.steps == [0, 1]
    np.testing.assert_array_equal(np.asarray(images.values[0].convert("RGB")), np.asarray(sample_image()))


CRASHING_TRAINING = textwrap.dedent(
    """
    import os, sys
    from mmplatform.tracking import Tracker
    url, fallback, experiment = sys.argv[1:4]
    tracker = Tracker(url, experiment, hparams={"aggregator": "mopoe"}, fallback_dir=fallback)
    for epoch in range(3):
        tracker.track(0.1 * (epoch + 1), "coherence", epoch, {"subset": "m0"})
    print(tracker.run_hash, flush=True)
    os._exit(1)  # crash before the checkpoint: no close, Aim's queue may still hold points
    """
)


def test_crash_then_reattach_recovers_and_dedupes(aim_server, tmp_path, request):
    experiment, fallback = unique_experiment(request), tmp_path / "fallback"
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_TRAINING, aim_server.url, str(fallback), experiment],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == 1, crashed.stderr
    run_hash = crashed.stdout.split()[-1]
    assert read_journal(fallback / f"{run_hash}.jsonl").recorded_steps() == {("coherence", '{"subset":"m0"}'): {0, 1, 2}}

    # The restarted trial resumes from the checkpoint of epoch 1 and retries epoch 2.
    with Tracker(aim_server.url, experiment, run_hash=run_hash, hparams={"aggregator": "mopoe"}, fallback_dir=fallback) as resumed:
        assert resumed.track(0.99, "coherence", 2, {"subset": "m0"}) is False
        assert resumed.track(0.4, "coherence", 3, {"subset": "m0"}) is True
        # Pushing its own journal into the run did not append those records to it again.
        journaled = read_journal(resumed.journal_path).records
        assert [r["step"] for r in journaled] == [0, 1, 2, 3]
    assert list(iter_journals(fallback)) == []

    reindex(aim_server.url)
    assert [run.run_hash for run in query_runs(aim_server.url, f'run.experiment == "{experiment}"')] == [run_hash]
    assert check_steps(aim_server.url, experiment, "coherence", {"subset": "m0"}) == [
        (run_hash, [0, 1, 2, 3], pytest.approx([0.1, 0.2, 0.3, 0.4]))
    ]


# ------------------------------------------------------------------ dead servers


def closed_port_url() -> str:
    return f"aim://127.0.0.1:{free_port()}"


def test_unreachable_at_open_is_journaled_and_replayed(aim_server, local_repo, tmp_path, request):
    experiment, fallback = unique_experiment(request), tmp_path / "fallback"
    started = time.monotonic()
    with pytest.warns(RemoteTrackingWarning) as warned:
        with Tracker(closed_port_url(), experiment, hparams=HPARAMS, fallback_dir=fallback) as tracker:
            log_two_epochs(tracker)
            original_hash = tracker.run_hash
    assert time.monotonic() - started < HANG_GUARD_S
    assert tracker.degraded
    assert sum(issubclass(w.category, RemoteTrackingWarning) for w in warned) == 1

    # Recovery into the real server: a new run (the server never saw this hash) that says
    # where it came from; again, to check that a second replay adds nothing.
    first, again = replay_fallback(fallback, aim_server.url), replay_fallback(fallback, aim_server.url)
    assert len(first) == 1 and first[0].pushed == 6  # 5 metric points + 1 image
    assert again[0].run_hash == first[0].run_hash and again[0].pushed == 0
    reindex(aim_server.url)
    check_two_epochs(aim_server.url, first[0].run_hash, experiment)
    (run,) = query_runs(aim_server.url, f'run.experiment == "{experiment}"')
    assert run.params["fallback"] == {"intended_repo": tracker.repo, "original_run_hash": original_hash}

    # Or into a local repo, to browse with `aim up`.
    (into_local,) = replay_fallback(fallback, local_repo)
    reindex(local_repo)
    check_two_epochs(local_repo, into_local.run_hash, experiment)


def test_reattach_once_the_server_is_back_pushes_the_journal(aim_server, tmp_path, request):
    # A trial started while the server was down (its hash exists only in the journal);
    # after a restart the server is up. Same fallback dir, the URL now reaches a server
    # (standing in for the same server coming back, which would need its port back).
    experiment, fallback = unique_experiment(request), tmp_path / "fallback"
    with pytest.warns(RemoteTrackingWarning):
        with Tracker(closed_port_url(), experiment, hparams=HPARAMS, fallback_dir=fallback) as offline:
            offline.track(0.1, "coherence", 0, MISSING)
            offline.track(0.2, "coherence", 1, MISSING)
    offline_hash = offline.run_hash

    with Tracker(aim_server.url, experiment, run_hash=offline_hash, hparams=HPARAMS, fallback_dir=fallback) as resumed:
        assert resumed.run_hash != offline_hash  # the server could not know that hash
        assert not resumed.degraded
        assert resumed.track(0.99, "coherence", 1, MISSING) is False  # pushed from the journal
        assert resumed.track(0.3, "coherence", 2, MISSING) is True
    server_hash = resumed.run_hash

    # An older checkpoint still holding the offline hash lands on the same run.
    with Tracker(aim_server.url, experiment, run_hash=offline_hash, hparams=HPARAMS, fallback_dir=fallback) as again:
        assert again.run_hash == server_hash
        assert again.track(0.99, "coherence", 2, MISSING) is False

    reindex(aim_server.url)
    assert [run.run_hash for run in query_runs(aim_server.url, f'run.experiment == "{experiment}"')] == [server_hash]
    assert check_steps(aim_server.url, experiment, "coherence", MISSING) == [(server_hash, [0, 1, 2], [0.1, 0.2, 0.3])]


def test_silent_server_at_open_is_bounded(tmp_path):
    # Accepts TCP connections (kernel backlog) but never answers: Aim alone blocks ~30 s.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"aim://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        with pytest.warns(RemoteTrackingWarning):
            tracker = Tracker(url, "exp", hparams=HPARAMS, fallback_dir=tmp_path, probe_timeout_s=1.0)
        tracker.track(1.0, "coherence", 0, MISSING)
        tracker.close()
        assert time.monotonic() - started < HANG_GUARD_S
    assert tracker.degraded
    records = read_journal(tracker.journal_path).records
    assert [(r["name"], r["step"], r["value"]) for r in records] == [("coherence", 0, 1.0)]


def test_strict_tracker_raises_instead_of_falling_back(tmp_path):
    with pytest.raises(RemoteUnavailable):
        Tracker(closed_port_url(), "exp", fallback_dir=tmp_path, strict=True)
    assert list(iter_journals(tmp_path)) == []


def test_server_frozen_mid_run_is_bounded(aim_server_factory, tmp_path):
    server = aim_server_factory()
    tracker = Tracker(server.url, "exp", hparams=HPARAMS, fallback_dir=tmp_path, timeout_s=5.0, probe_timeout_s=1.0)
    tracker.track(0.25, "coherence", 0, MISSING)
    server.freeze()  # port open, nothing answers: Aim's reads and close would wait forever
    started = time.monotonic()
    with pytest.warns(RemoteTrackingWarning):
        tracker.track(0.5, "coherence", 1, MISSING)
        tracker.close()
    assert time.monotonic() - started < HANG_GUARD_S
    records = read_journal(tracker.journal_path).records
    assert [(r["step"], r["value"]) for r in records] == [(0, 0.25), (1, 0.5)]


TRAINING_THAT_LOSES_ITS_SERVER = textwrap.dedent(
    """
    import json, sys, time, warnings
    from PIL import Image
    from mmplatform.tracking import RemoteTrackingWarning, Tracker
    url, fallback, experiment = sys.argv[1:4]
    context = {"subset": "m0_m1", "modality": "m2", "split": "test", "kind": "missing"}
    tracker = Tracker(url, experiment, hparams={"aggregator": "mopoe"}, fallback_dir=fallback)
    tracker.track_many({"coherence": 0.25, "loss": 3.0}, 0, context)
    tracker.track_image(Image.new("RGB", (12, 8), (10, 200, 30)), "samples", 0, {"subset": "m0"})
    print("tracking", flush=True)
    sys.stdin.readline()  # the test kills the server now
    slowest = 0.0
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        for epoch in (1, 2):
            started = time.monotonic()
            tracker.track_many({"coherence": 0.25 * (epoch + 1), "loss": 3.0 - epoch}, epoch, context)
            slowest = max(slowest, time.monotonic() - started)
        tracker.set_summary({"best_coherence": 0.75})
        started = time.monotonic()
        tracker.close()
        slowest = max(slowest, time.monotonic() - started)
    print(json.dumps({
        "run_hash": tracker.run_hash,
        "degraded": tracker.degraded,
        "warnings": sum(issubclass(w.category, RemoteTrackingWarning) for w in warned),
        "slowest_call_s": slowest,
    }), flush=True)
    """
)


def test_a_restarted_server_gets_the_run_back_without_a_replay(aim_server_factory, tmp_path, request):
    # The server dies after epoch 0 and is back (same port, same repo) before epoch 2: the
    # tracker journals epoch 1, re-attaches at epoch 2 and pushes it; nothing is left to replay.
    experiment, fallback = unique_experiment(request), tmp_path / "fallback"
    server = aim_server_factory()
    tracker = Tracker(server.url, experiment, hparams=HPARAMS, fallback_dir=fallback, timeout_s=10,
                      probe_timeout_s=1, reconnect_every_s=0)
    assert tracker.track_many({"coherence": 0.25, "loss": 3.0}, 0, MISSING) == 2
    server.kill()
    with pytest.warns(RemoteTrackingWarning):
        assert tracker.track_many({"coherence": 0.5, "loss": 2.0}, 1, MISSING) == 2
    assert tracker.degraded
    aim_server_factory(server.repo_path, port=server.port)
    assert tracker.track_many({"coherence": 0.75, "loss": 1.0}, 2, MISSING) == 2
    assert not tracker.degraded
    assert tracker.track(0.99, "coherence", 1, MISSING) is False  # epoch 1 went in from the journal
    tracker.set_summary({"best_coherence": 0.75})
    tracker.close()
    assert list(iter_journals(fallback)) == []  # the server confirmed every point

    reindex(server.url)
    (run,) = query_runs(server.url, f'run.experiment == "{experiment}"')
    assert run.run_hash == tracker.run_hash and run.summary == {"best_coherence": 0.75}
    assert check_steps(server.url, experiment, "coherence", MISSING) == [(run.run_hash, [0, 1, 2], [0.25, 0.5, 0.75])]
    assert check_steps(server.url, experiment, "loss", MISSING) == [(run.run_hash, [0, 1, 2], [3.0, 2.0, 1.0])]


def test_server_killed_mid_run_training_goes_on_and_exits(aim_server_factory, tmp_path, request):
    # The training runs in its own process, as it does on the cluster: besides tracking
    # promptly, it must be able to exit (Aim's exit cleanup alone waits forever for a
    # server that is gone).
    experiment, fallback = unique_experiment(request), tmp_path / "fallback"
    server = aim_server_factory()
    child = subprocess.Popen(
        [sys.executable, "-c", TRAINING_THAT_LOSES_ITS_SERVER, server.url, str(fallback), experiment],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "tracking"
        server.kill()
        child.stdin.write("go\n")
        child.stdin.flush()
        stdout, stderr = child.communicate(timeout=90)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, stderr[-3000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["degraded"] is True
    assert report["warnings"] == 1
    assert report["slowest_call_s"] < HANG_GUARD_S
    run_hash = report["run_hash"]
    assert (fallback / f"{run_hash}.jsonl").exists()

    # Recovery into the same run: here into the dead server's own repo directory (what an
    # operator can do while the server is down; `aim up` shows it).
    (result,) = replay_fallback(fallback, server.repo_path)
    assert result.run_hash == run_hash
    reindex(server.repo_path)
    repo = str(server.repo_path)
    assert check_steps(repo, experiment, "coherence", MISSING) == [(run_hash, [0, 1, 2], [0.25, 0.5, 0.75])]
    assert check_steps(repo, experiment, "loss", MISSING) == [(run_hash, [0, 1, 2], [3.0, 2.0, 1.0])]
    (run,) = query_runs(repo, f'run.experiment == "{experiment}"')
    assert run.summary == {"best_coherence": 0.75}
    images = query_images(repo, f'run.experiment == "{experiment}" and images.name == "samples"')
    assert [series.steps for series in images] == [[0]]
