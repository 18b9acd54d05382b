"""The fault matrix (GitHub issue 16): seven faults injected into a tiny real training or sweep.

Each fault is injected into a PolyMNIST training (MoPoE, 3 epochs of 4 steps, one CPU worker,
evaluated every epoch) or a sweep of two such trials, on a real local Ray cluster (``ray start
--head``; a second node with ``ray start --address``), with a real Aim repo (an ``aim server`` on
loopback for the server fault) and shards built offline, and compared with an uninterrupted
baseline of the same training run first, by value (the training is deterministic):

========================  ===============================================================
worker_killed             a Train worker SIGKILLed mid-epoch (epoch 2, step 2)
driver_killed             ``mmplatform train`` SIGKILLed mid-epoch, then run again
tune_driver_killed        the sweep's driver SIGKILLed mid-trial, then the sweep run again
node_killed               a second Ray node hosting the Train worker SIGKILLed mid-epoch
shard_truncated           a test shard truncated on disk while a sweep's 2nd trial runs
aim_restarted             the Aim server SIGKILLed after epoch 1, restarted on its port
checkpoint_unwritable     the run's checkpoint directory made unwritable after epoch 1
========================  ===============================================================

Figures per fault (``tests/fault_fixtures.py`` defines them): injected, outcome (``survived``,
``reported`` with the error naming what broke, or ``failed``), epochs of work lost (steps run in
all attempts beyond those of the finished epochs), metrics lost (baseline Aim points missing or
different in the faulted run), duplicate Aim runs, sweep trials lost, wall seconds.

    .venv/bin/python benchmarks/fault_matrix.py                          # all seven, ~10 min on 2 cores
    .venv/bin/python benchmarks/fault_matrix.py --faults worker_killed,aim_restarted

Prints a markdown table, then one JSON object, written to ``--out`` (default
``benchmarks/results/fault_matrix.json``). Ray: the cluster in ``RAY_ADDRESS`` if set (with its
auth token in the environment), else a local one started with ``ray start --head`` and stopped
by PID at the end. Everything else goes to a temporary folder (``--work-dir`` to keep it).

``--smoke``: worker_killed and checkpoint_unwritable (a fault survived, a fault reported by name),
2 epochs of 2 steps; writes no file unless ``--out`` is given. ``tests/test_faults.py`` covers
the node, shard and Aim server faults at that size.
"""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read by Ray at import: loopback only

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))
from _report import emit, machine_facts, parse_with_smoke  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "fault_matrix.json"
COLUMNS = ("fault", "injected", "outcome", "epochs lost", "metrics lost", "duplicate runs", "trials lost", "s", "message")


def parse_args() -> argparse.Namespace:
    from tests.fault_fixtures import EPOCHS, STEPS_PER_EPOCH, FaultLab

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", default=",".join(FaultLab.FAULTS),
                        help=f"comma-separated subset of {', '.join(FaultLab.FAULTS)}")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs of every training (at least 2)")
    parser.add_argument("--steps-per-epoch", type=int, default=STEPS_PER_EPOCH, help="at least 2 (faults hit step 2)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep data, results and Aim repos here")
    parser.add_argument("--out", default=str(RESULTS))
    args = parse_with_smoke(parser, {"faults": "worker_killed,checkpoint_unwritable", "epochs": 2,
                                     "steps_per_epoch": 2})
    args.faults = [name.strip() for name in args.faults.split(",") if name.strip()]
    unknown = sorted(set(args.faults) - set(FaultLab.FAULTS))
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(FaultLab.FAULTS)}")
    if args.epochs < 2 or args.steps_per_epoch < 2:
        parser.error("--epochs and --steps-per-epoch must be at least 2")
    return args


def markdown_table(rows: list[dict]) -> str:
    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:g}"
        return str(value).replace("|", "/")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row[key]) for key in (
            "fault", "injected", "outcome", "epochs_lost", "metrics_lost", "duplicate_runs", "trials_lost", "seconds",
            "message")) + " |")
    return "\n".join(lines)


def connect():
    """(cluster, stop): the cluster in RAY_ADDRESS, or a new local one that ``stop`` ends."""
    import ray

    from tests.ray_fixtures import LocalRayCluster, session_env, start_local_cluster

    if os.environ.get("RAY_ADDRESS"):
        cluster = LocalRayCluster(os.environ["RAY_ADDRESS"], "", Path("/nonexistent-ray-temp-dir"), dict(os.environ))
        ray.init(address=cluster.address)
        return cluster, ray.shutdown
    for key, value in session_env().items():
        os.environ.setdefault(key, value)
    cluster = start_local_cluster()
    os.environ.update(cluster.client_env())
    ray.init(address=cluster.address)

    def stop() -> None:
        ray.shutdown()
        cluster.stop()

    return cluster, stop


def main() -> None:
    args = parse_args()
    from data_pipelines.polymnist import build_polymnist
    from tests.conftest import POLYMNIST_FIXTURE
    from tests.fault_fixtures import FaultLab, FaultOutcome, write_untrained_classifiers

    load_at_start = [round(value, 2) for value in os.getloadavg()]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="fault-matrix-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    cluster, stop = connect()
    rows: list[dict] = []
    try:
        shards = work / "polymnist"
        if not (shards / "test" / "manifest.json").exists():
            build_polymnist(shards, progress=False, log=lambda _: None, **POLYMNIST_FIXTURE)
        classifiers = write_untrained_classifiers(shards, work / "classifiers")
        lab = FaultLab(cluster, shards, classifiers, work / "runs", epochs=args.epochs,
                       steps_per_epoch=args.steps_per_epoch)
        baseline_started = time.monotonic()
        baseline = lab.baseline
        baseline_s = round(time.monotonic() - baseline_started, 1)
        for fault in args.faults:
            print(f"fault {fault} ...", file=sys.stderr, flush=True)
            try:
                outcome = lab.run(fault)
            except Exception as error:  # the matrix goes on; this fault is reported as not injected
                outcome = FaultOutcome(fault, False, "not injected", f"{type(error).__name__}: {error}"[:300])
            rows.append(outcome.as_dict())
            print(f"fault {fault}: {outcome.outcome} ({outcome.message})", file=sys.stderr, flush=True)
    finally:
        stop()
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    table = markdown_table(rows)
    print(table, flush=True)
    result = {
        "benchmark": "fault_matrix",
        "settings": {"faults": args.faults, "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
                     "smoke": args.smoke},
        "baseline": {"epochs": args.epochs, "aim_points": len(baseline.points), "steps": baseline.steps,
                     "seconds": baseline_s},
        "faults": {row["fault"]: row for row in rows},
        "all_survived_or_reported": all(row["outcome"] in ("survived", "reported") for row in rows),
        "metrics_lost": sum(row["metrics_lost"] or 0 for row in rows),
        "duplicate_runs": sum(row["duplicate_runs"] or 0 for row in rows),
        "table": table,
        "wall_s": round(time.monotonic() - started, 1),
        "machine": {**machine_facts(), "load_average_at_start": load_at_start},
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
