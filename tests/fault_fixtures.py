"""The fault matrix (GitHub issue 16): each fault injected into a tiny real PolyMNIST training or
sweep, and what it cost, measured against an uninterrupted baseline of the same training.

Shared by ``tests/test_faults.py`` (one test per fault, asserting the figures) and
``benchmarks/fault_matrix.py`` (all faults, one table). Everything is real: a local Ray cluster
started with ``ray start`` (a second node joins it with ``ray start --address``), Ray Train and
Tune, a local Aim repo or an ``aim server`` on loopback, shards built offline. The training is
deterministic (CPU, one torch thread, seeded; ``tests/test_resumption.py``), so a faulted
training is compared with the baseline *by value*.

What each fault reports (``FaultOutcome``):

- ``outcome``: ``survived`` (the training or sweep finished as the baseline did), ``reported``
  (it failed as it must, with an error naming the broken thing: ``message``), or ``failed`` (it
  did neither: the fault was not survived and not named);
- ``epochs_lost``: training work done and thrown away, in epochs: the steps rank 0 ran in all
  attempts (the ``record_steps`` hook), minus the steps of the epochs the training finished,
  over the steps per epoch;
- ``metrics_lost``: points (metric, context, step) of the baseline's Aim run, up to the last
  epoch the faulted training finished, that its Aim run lacks or holds with another value;
- ``duplicate_runs``: Aim runs of the training (or of each trial) beyond one;
- ``trials_lost``: sweep trials that neither finished nor ended with the fault's named error.

Faults are injected at exact points through the test hooks (``mmplatform/training/test_hooks.py``):
rank 0 pauses mid-epoch or after an epoch's checkpoint, the fault is injected, and the worker is
killed or released.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from mmplatform.training.test_hooks import HOOKS_ENV

TIMEOUT_S = 600
EPOCHS, STEPS_PER_EPOCH = 3, 4
"""3 epochs of 4 steps: a fault in epoch 2 has a checkpoint behind it and an epoch after it."""
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the training


def write_untrained_classifiers(shards: Path, out: Path) -> Path:
    """Coherence classifiers as the platform stores them, untrained: coherence values are then
    meaningless but deterministic, which is all fault tests need (training them costs a minute)."""
    import torch

    from data_pipelines.manifest import load_manifest
    from mmplatform.coherence_classifiers import ClassifierSettings, _classifier_bank, save_classifiers

    manifest = load_manifest(shards / "train")
    torch.manual_seed(0)
    save_classifiers(_classifier_bank(manifest), manifest, "accuracy", {name: 1.0 for name in manifest.modality_names},
                     ClassifierSettings(), out, epochs_trained=1)
    return out


def training_tree(root: Path, shards: Path, classifiers: Path, name: str, *, epochs: int = EPOCHS,
                  steps_per_epoch: int = STEPS_PER_EPOCH, repo: str | None = None, max_failures: int = 1) -> dict:
    """A tiny MoPoE training, evaluated every epoch; every epoch's checkpoint kept."""
    return {
        "name": name,
        "storage_path": str(root / "results"),
        "data": {"path": str(shards), "batch_size": 8, "steps_per_epoch": steps_per_epoch, "loader_workers": 0,
                 "eval_batch_size": 32},
        "model": {"aggregator": "mopoe", "latent_dim": 8},
        "training": {"epochs": epochs, "seed": 5, "max_failures": max_failures, "checkpoints_to_keep": epochs},
        "evaluation": {"metrics": ["coherence", "log_likelihood"],
                       "objective_weights": {"coherence_missing": 1.0},
                       "classifiers_dir": str(classifiers), "min_classifier_score": 0.0,
                       "random_coherence_samples": 16, "log_likelihood_samples": 2},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1.0},
        "tracking": {"repo": repo or str(root / "aim"), "experiment": "faults", "fallback_dir": str(root / "fallback")},
    }


def run_dir(tree: dict) -> Path:
    return Path(tree["storage_path"]) / tree["name"]


# ---------------------------------------------------------------- observing


Point = tuple[str, str, int]
"""(metric name, context as sorted JSON, step)."""


def aim_points(repo: str, query: str) -> tuple[int, dict[Point, float]]:
    """How many Aim runs match ``query``, and every metric point of the first (by hash)."""
    from mmplatform.tracking import query_metrics, query_runs, reindex

    reindex(repo)
    runs = sorted(query_runs(repo, query), key=lambda run: run.run_hash)
    if not runs:
        return 0, {}
    points = {}
    for series in query_metrics(repo, f'run.hash == "{runs[0].run_hash}"'):
        context = json.dumps(series.context, sort_keys=True)
        for step, value in zip(series.steps, series.values):
            points[(series.name, context, step)] = value
    return len(runs), points


def run_query(tree: dict) -> str:
    return f'run.hparams.run_name == "{tree["name"]}"'


def metrics_lost(baseline: dict[Point, float], faulted: dict[Point, float], epochs: int) -> int:
    """Baseline points up to ``epochs`` that the faulted run lacks or holds with another value."""
    return sum(1 for key, value in baseline.items() if key[2] <= epochs and faulted.get(key) != value)


def steps_run(events_dir: Path, run_name: str) -> int:
    """Training steps rank 0 ran in every attempt of ``run_name`` (the ``record_steps`` hook)."""
    path = events_dir / "steps.rank0.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if json.loads(line)["run"] == run_name)


def finished_epochs(tree: dict) -> int:
    """The last epoch whose checkpoint the training wrote."""
    from mmplatform.training.checkpointing import STATE_FILE

    epochs = [int(path.parent.name.split("=")[1]) for path in run_dir(tree).glob(f"checkpoint_epoch=*/{STATE_FILE}")]
    return max(epochs, default=0)


def wait_for_pause(events_dir: Path, alive: Callable[[], bool], checkpoint_of: tuple[Path, int] | None = None,
                   timeout_s: float = TIMEOUT_S) -> int:
    """The paused worker's pid; with ``checkpoint_of=(storage_path, epoch)`` only once Ray Train's
    controller has recorded that epoch's checkpoint of a run under ``storage_path`` (what a restart
    resumes from). The controller registers a reported checkpoint when it next polls the workers:
    a worker lost within that moment restarts from the checkpoint before (seen here: a worker
    killed 2 tiny steps after its report of epoch 1 started again from epoch 1)."""
    pid_file = events_dir / "paused.pid"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        if pid_file.exists():
            if checkpoint_of is None:
                return int(pid_file.read_text())
            storage, epoch = checkpoint_of
            for snapshot in Path(storage).glob("*/checkpoint_manager_snapshot.json"):
                if f"checkpoint_epoch={epoch:04d}" in snapshot.read_text():
                    return int(pid_file.read_text())
        time.sleep(0.2)
    raise AssertionError(f"the training did not pause ({events_dir})")


def release(events_dir: Path) -> None:
    (events_dir / "release").touch()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_until_dead(pid: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.5)
    assert not alive(pid), f"process {pid} is still running"


@contextlib.contextmanager
def hooks_env(settings: dict):
    """``MMPLATFORM_TEST_HOOKS`` for trainings launched from this process meanwhile."""
    saved = os.environ.get(HOOKS_ENV)
    os.environ[HOOKS_ENV] = json.dumps(settings)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(HOOKS_ENV, None)
        else:
            os.environ[HOOKS_ENV] = saved


def error_line(error: BaseException | str | None) -> str | None:
    """The line of an error that says what broke (Ray wraps worker errors in tracebacks)."""
    if error is None:
        return None
    text = str(error)
    if isinstance(error, BaseException) and "\n" not in text.strip():
        return f"{type(error).__name__}: {text.strip()}"
    for marker in ("ShardError: ", "CheckpointWriteError: "):
        for line in text.splitlines():
            if marker in line:
                return line[line.index(marker):].strip()
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


# ---------------------------------------------------------------- outcomes


@dataclass
class FaultOutcome:
    fault: str
    injected: bool
    outcome: str
    """``survived``, ``reported`` (failed with the broken thing named), ``failed`` or ``not injected``."""
    message: str | None = None
    epochs_lost: float | None = None
    metrics_lost: int | None = None
    duplicate_runs: int | None = None
    trials_lost: int | None = None
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Baseline:
    tree: dict
    points: dict[Point, float]
    steps: int


class FaultLab:
    """Runs the faults on one Ray cluster (this process is its driver) against one baseline."""

    def __init__(self, cluster, shards: Path, classifiers: Path, root: Path, epochs: int = EPOCHS,
                 steps_per_epoch: int = STEPS_PER_EPOCH):
        self.cluster, self.shards, self.classifiers, self.root = cluster, shards, classifiers, Path(root)
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self._baseline: Baseline | None = None
        self.mid_epoch = {"epoch": 2, "step": max(1, steps_per_epoch // 2)}
        """Where the kill faults strike: half-way through epoch 2, its epoch-1 checkpoint recorded."""

    def tree(self, name: str, **options) -> dict:
        root = self.root / name
        return training_tree(root, options.pop("shards", self.shards), self.classifiers, name, epochs=self.epochs,
                             steps_per_epoch=self.steps_per_epoch, **options)

    def events(self, name: str) -> Path:
        return self.root / name / "events"

    @property
    def baseline(self) -> Baseline:
        """The uninterrupted training, once."""
        if self._baseline is None:
            from mmplatform.config import build_config
            from mmplatform.training.launcher import fit

            tree = self.tree("baseline")
            events = self.events("baseline")
            with hooks_env({"events_dir": str(events), "record_steps": True}):
                result = fit(build_config(tree))
            assert result.error is None and result.metrics["status"] == "finished", result.error
            runs, points = aim_points(tree["tracking"]["repo"], run_query(tree))
            assert runs == 1 and points
            self._baseline = Baseline(tree, points, steps_run(events, "baseline"))
        return self._baseline

    def measure(self, fault: str, tree: dict, events: Path, started: float, *, outcome: str, message: str | None,
                repo: str | None = None, **details) -> FaultOutcome:
        """The figures of one faulted training against the baseline."""
        done = finished_epochs(tree)
        runs, points = aim_points(repo or tree["tracking"]["repo"], run_query(tree))
        lost = (steps_run(events, tree["name"]) - done * self.steps_per_epoch) / self.steps_per_epoch
        return FaultOutcome(
            fault=fault, injected=True, outcome=outcome, message=message, epochs_lost=lost,
            metrics_lost=metrics_lost(self.baseline.points, points, done), duplicate_runs=max(0, runs - 1),
            seconds=round(time.monotonic() - started, 1), details={"epochs_finished": done, "aim_runs": runs, **details},
        )

    # ------------------------------------------------------------ the faults

    def fit_in_thread(self, tree: dict) -> tuple[threading.Thread, dict]:
        from mmplatform.config import build_config
        from mmplatform.training.launcher import fit

        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = fit(build_config(tree))
            except Exception as error:  # reported to the caller
                outcome["error"] = error

        runner = threading.Thread(target=run)
        runner.start()
        return runner, outcome

    @staticmethod
    def fit_outcome(outcome: dict) -> tuple[bool, str | None]:
        """(finished, error line) of a fit run by ``fit_in_thread``."""
        if "error" in outcome:
            return False, error_line(outcome["error"])
        result = outcome["result"]
        if result.error is not None:
            return False, error_line(result.error)
        return result.metrics.get("status") == "finished", None

    def worker_killed(self) -> FaultOutcome:
        """A Train worker SIGKILLed mid-epoch (half-way through epoch 2): Ray Train restarts the
        worker group from the epoch-1 checkpoint (``training.max_failures``)."""
        self.baseline
        started, name = time.monotonic(), "worker-killed"
        tree, events = self.tree(name), self.events(name)
        with hooks_env({"events_dir": str(events), "record_steps": True, "pause_at": self.mid_epoch}):
            runner, outcome = self.fit_in_thread(tree)
            try:
                pid = wait_for_pause(events, runner.is_alive, checkpoint_of=(run_dir(tree).parent, 1))
                os.kill(pid, signal.SIGKILL)
            finally:
                runner.join(timeout=TIMEOUT_S)
        finished, message = self.fit_outcome(outcome)
        return self.measure(name, tree, events, started, outcome="survived" if finished else "failed",
                            message=message or f"worker pid {pid} SIGKILLed half-way through epoch 2; resumed from epoch 1")

    def train_command(self, tree: dict) -> list[str]:
        """``mmplatform train --config <file>`` for ``tree``, its config written next to its runs."""
        config_file = self.root / tree["name"] / "train.yaml"
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(yaml.safe_dump(tree))
        return [str(Path(sys.executable).parent / "mmplatform"), "train", "--config", str(config_file)]

    def driver_killed(self) -> FaultOutcome:
        """The process driving the training (``mmplatform train --config``) SIGKILLed mid-epoch,
        then the same command run again: it resumes from the last checkpoint."""
        self.baseline
        started, name = time.monotonic(), "driver-killed"
        tree, events = self.tree(name), self.events(name)
        command = self.train_command(tree)
        env = {**os.environ, **self.cluster.client_env(), "OMP_NUM_THREADS": "1"}
        hooks = {"events_dir": str(events), "record_steps": True}
        driver = subprocess.Popen(command, env={**env, HOOKS_ENV: json.dumps({**hooks, "pause_at": self.mid_epoch})},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            worker_pid = wait_for_pause(events, lambda: driver.poll() is None, checkpoint_of=(run_dir(tree).parent, 1))
        except AssertionError:
            driver.kill()
            raise AssertionError(f"driver ended early:\n{driver.communicate()[1][-3000:]}") from None
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
        driver.stderr.close()
        wait_until_dead(worker_pid)  # Ray ends the actors of a dead driver's job
        rerun = subprocess.run(command, env={**env, HOOKS_ENV: json.dumps(hooks)}, capture_output=True, text=True,
                               timeout=TIMEOUT_S)
        message = f"driver SIGKILLed half-way through epoch 2; rerun exited {rerun.returncode}"
        if rerun.returncode != 0:
            message += ": " + (rerun.stderr.strip().splitlines() or [""])[-1]
        return self.measure(name, tree, events, started, outcome="survived" if rerun.returncode == 0 else "failed",
                            message=message)

    def node_killed(self) -> FaultOutcome:
        """A second node (``ray start --address``) hosting the Train worker, SIGKILLed (every
        process of it, by PID) half-way through epoch 2; a replacement node joins (what an
        autoscaler does for a lost preemptible node) and the worker group restarts there from the
        epoch-1 checkpoint, driven by the same ``mmplatform train`` process throughout.

        A cluster of its own, because nodes can join only a head in Ray's multi-node mode, on the
        machine's own address (the session's cluster is single-host, loopback only). Its head has
        no CPU, so the worker can only be placed on a joined node; the driver and Train's
        controller (0 CPU, pinned to the driver's node) stay on the head."""
        from tests.ray_fixtures import machine_address, start_local_cluster, start_worker_node

        self.baseline
        started, name = time.monotonic(), "node-killed"
        tree, events = self.tree(name), self.events(name)
        command = self.train_command(tree)
        try:
            address = machine_address()
        except OSError as error:
            return FaultOutcome(name, False, "not injected", f"no non-loopback address for a second node: {error}")
        head = start_local_cluster(num_cpus=0, node_ip=address)
        nodes, driver = [], None
        try:
            nodes.append(start_worker_node(head, num_cpus=1))
            env = {**os.environ, **head.client_env(), "OMP_NUM_THREADS": "1",
                   HOOKS_ENV: json.dumps({"events_dir": str(events), "record_steps": True, "pause_at": self.mid_epoch})}
            driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                pid = wait_for_pause(events, lambda: driver.poll() is None, checkpoint_of=(run_dir(tree).parent, 1))
            except AssertionError:
                driver.kill()
                raise AssertionError(f"driver ended early:\n{driver.communicate()[1][-3000:]}") from None
            on_node = pid in nodes[0]._processes_and_children()
            killed = nodes[0].kill()
            nodes.append(start_worker_node(head, num_cpus=1))
            _, stderr = driver.communicate(timeout=TIMEOUT_S)
        finally:
            if driver is not None and driver.poll() is None:
                driver.kill()
                driver.communicate()
            for node in nodes:
                node.stop()
            head.stop()
        finished = driver.returncode == 0
        message = (f"node of {len(killed)} processes (the worker's: {on_node}) SIGKILLed half-way through epoch 2; "
                   "the worker group restarted on a replacement node")
        if not finished:
            message = f"mmplatform train exited {driver.returncode}: " + (stderr.strip().splitlines() or [""])[-1]
        return self.measure(name, tree, events, started, outcome="survived" if finished else "failed",
                            message=message, worker_was_on_second_node=on_node)

    def aim_restarted(self) -> FaultOutcome:
        """The Aim server killed (SIGKILL) after epoch 1 and started again on the same port and
        repo before epoch 2: the training goes on, the tracker journals what the server missed
        and re-attaches to the run once the server answers again (at a new step, or at close),
        pushing the journal into it. ``replay_fallback`` runs only on a journal left behind
        (``journals_left``), so the figures say whether the platform alone lost nothing."""
        from mmplatform.tracking import replay_fallback
        from tests.aim_fixtures import start_aim_server

        self.baseline
        started, name = time.monotonic(), "aim-restarted"
        server = start_aim_server(self.root / name / "aim-repo")
        tree, events = self.tree(name, repo=server.url), self.events(name)
        try:
            with hooks_env({"events_dir": str(events), "record_steps": True, "pause_at": {"epoch": 1}}):
                runner, outcome = self.fit_in_thread(tree)
                try:
                    wait_for_pause(events, runner.is_alive)
                    server.kill()
                    server = start_aim_server(server.repo_path, port=server.port)
                finally:
                    release(events)  # also when the restart failed: the training must not wait forever
                    runner.join(timeout=TIMEOUT_S)
            finished, message = self.fit_outcome(outcome)
            done = finished_epochs(tree)
            _, before = aim_points(server.url, run_query(tree))
            lost_before_replay = metrics_lost(self.baseline.points, before, done)
            journals = sorted(Path(tree["tracking"]["fallback_dir"]).glob("*.jsonl"))
            replayed = replay_fallback(tree["tracking"]["fallback_dir"], server.url) if journals else []
            return self.measure(name, tree, events, started, outcome="survived" if finished else "failed",
                                message=message or f"server killed after epoch 1, restarted on port {server.port}",
                                repo=server.url, metrics_lost_before_replay=lost_before_replay,
                                journals_left=len(journals), replayed_points=sum(r.pushed for r in replayed))
        finally:
            server.stop()

    def checkpoint_unwritable(self) -> FaultOutcome:
        """The run's checkpoint directory made unwritable after epoch 1's checkpoint: the training
        fails with an error naming the directory, and the epoch-1 checkpoint stays loadable."""
        from mmplatform.training.checkpointing import TrainingState

        self.baseline
        started, name = time.monotonic(), "checkpoint-unwritable"
        tree, events = self.tree(name), self.events(name)
        directory = run_dir(tree)
        with hooks_env({"events_dir": str(events), "record_steps": True, "pause_at": {"epoch": 1}}):
            runner, outcome = self.fit_in_thread(tree)
            try:
                wait_for_pause(events, runner.is_alive, checkpoint_of=(run_dir(tree).parent, 1))
                with unwritable(directory) as how:
                    release(events)
                    runner.join(timeout=TIMEOUT_S)
            finally:
                release(events)
                runner.join(timeout=TIMEOUT_S)
        finished, message = self.fit_outcome(outcome)
        kept = TrainingState.load(directory / "checkpoint_epoch=0001")
        expected = TrainingState.load(run_dir(self.baseline.tree) / "checkpoint_epoch=0001")
        same = kept.epoch == 1 and all(kept.model[k].equal(v) for k, v in expected.model.items())
        named = message is not None and str(directory) in message
        return self.measure(name, tree, events, started, outcome="reported" if named and not finished else "failed",
                            message=message, made_unwritable_by=how, last_checkpoint_epoch=kept.epoch,
                            last_checkpoint_equals_baseline=same)

    def sweep(self, name: str, base: dict, hooks: dict | None = None) -> subprocess.Popen:
        """A FIFO sweep of 2 trials, one at a time, in its own driver process (what a user runs),
        whose Ray job carries the test hooks to the trial drivers and their Train workers. The two
        trials differ only in ``training.max_bad_steps`` (the guard never fires here), so each must
        reproduce the baseline value for value."""
        tree = {
            "name": name, "base": {key: value for key, value in base.items() if key != "name"},
            "search_space": {"training.max_bad_steps": {"type": "grid", "values": [10, 11]}},
            "num_samples": 1, "scheduler": {"kind": "fifo", "max_epochs": self.epochs},
            "max_concurrent_trials": 1, "trial_max_failures": 0,
        }
        storage = self.root / name / "results"
        summary = self.root / name / "summary.json"
        env = {**os.environ, **self.cluster.client_env(), "OMP_NUM_THREADS": "1"}
        env.pop(HOOKS_ENV, None)
        if hooks:
            env[HOOKS_ENV] = json.dumps(hooks)
        return subprocess.Popen([sys.executable, "-c", SWEEP_DRIVER, json.dumps(tree), str(storage), str(summary)],
                                env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def sweep_figures(self, name: str, events: Path, repo: str, fault_named: str | None = None) -> dict[str, Any]:
        """Per trial of sweep ``name``: Aim runs, metrics lost against the baseline, steps run;
        and the trials lost (neither finished, nor failed naming ``fault_named``)."""
        summary = json.loads((self.root / name / "summary.json").read_text())
        trials, lost, duplicates, missing, work = summary["trials"], 0, 0, 0, 0.0
        for trial in trials:
            trial_name = f"{name}-{trial['trial_id']}"
            runs, points = aim_points(repo, f'run.hparams.trial_id == "{trial["trial_id"]}"')
            epochs = trial["epoch"] or 0
            duplicates += max(0, runs - 1)
            missing += metrics_lost(self.baseline.points, points, epochs)
            work += (steps_run(events, trial_name) - epochs * self.steps_per_epoch) / self.steps_per_epoch
            named = fault_named is not None and fault_named in (trial["error"] or "")
            if trial["status"] != "finished" and not named:
                lost += 1
        lost += 2 - len(trials)
        return {"trials": trials, "trials_lost": lost, "duplicate_runs": duplicates, "metrics_lost": missing,
                "epochs_lost": work}

    def tune_driver_killed(self) -> FaultOutcome:
        """The sweep's driver (the Tune driver) SIGKILLed while its first trial is mid-epoch 2,
        then the same sweep run again: ``Tuner.restore`` continues it."""
        self.baseline
        started, name = time.monotonic(), "tune-driver-killed"
        base, events = self.tree(name), self.events(name)
        hooks = {"events_dir": str(events), "record_steps": True}
        first = self.sweep(name, base, {**hooks, "pause_at": self.mid_epoch})
        try:
            worker_pid = wait_for_pause(events, lambda: first.poll() is None,
                                        checkpoint_of=(Path(base["storage_path"]), 1))
        except AssertionError:
            first.kill()
            raise AssertionError(f"sweep ended early:\n{first.communicate()[1][-3000:]}") from None
        time.sleep(2)  # Tune snapshots its experiment state every few seconds
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        first.stderr.close()
        wait_until_dead(worker_pid)
        second = self.sweep(name, base, hooks)
        _, stderr = second.communicate(timeout=TIMEOUT_S)
        if second.returncode != 0:
            return FaultOutcome(name, True, "failed", (stderr.strip().splitlines() or [""])[-1],
                                seconds=round(time.monotonic() - started, 1))
        figures = self.sweep_figures(name, events, base["tracking"]["repo"])
        survived = figures["trials_lost"] == 0 and all(t["status"] == "finished" for t in figures["trials"])
        return FaultOutcome(
            name, True, "survived" if survived else "failed",
            "sweep driver SIGKILLed half-way through trial 1's epoch 2; restored with Tuner.restore",
            epochs_lost=figures["epochs_lost"], metrics_lost=figures["metrics_lost"],
            duplicate_runs=figures["duplicate_runs"], trials_lost=figures["trials_lost"],
            seconds=round(time.monotonic() - started, 1), details={"trials": figures["trials"]},
        )

    def shard_truncated(self) -> FaultOutcome:
        """A test shard truncated on disk while the second trial of a sweep stands after epoch 1:
        that trial fails with an error naming the shard; the first trial finished; the sweep ends
        normally and reports both."""
        self.baseline
        started, name = time.monotonic(), "shard-truncated"
        shards = Path(shutil.copytree(self.shards, self.root / name / "polymnist"))
        base, events = self.tree(name, shards=shards), self.events(name)
        hooks = {"events_dir": str(events), "record_steps": True, "pause_at": {"epoch": 1, "run": "_00001"}}
        process = self.sweep(name, base, hooks)
        try:
            wait_for_pause(events, lambda: process.poll() is None)
            shard = truncate_first_shard(shards / "test")
            release(events)
            _, stderr = process.communicate(timeout=TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()
        if process.returncode != 0:
            return FaultOutcome(name, True, "failed", (stderr.strip().splitlines() or [""])[-1],
                                seconds=round(time.monotonic() - started, 1))
        figures = self.sweep_figures(name, events, base["tracking"]["repo"], fault_named=str(shard))
        hit = [t for t in figures["trials"] if t["status"] != "finished"]
        message = error_line(hit[0]["error"]) if hit else None
        named = bool(hit) and str(shard) in (hit[0]["error"] or "")
        # The hit trial's unfinished epoch is the fault's, not work lost: count it out.
        return FaultOutcome(
            name, True, "reported" if named and figures["trials_lost"] == 0 else "failed", message,
            epochs_lost=figures["epochs_lost"], metrics_lost=figures["metrics_lost"],
            duplicate_runs=figures["duplicate_runs"], trials_lost=figures["trials_lost"],
            seconds=round(time.monotonic() - started, 1), details={"shard": str(shard), "trials": figures["trials"]},
        )

    FAULTS = ("worker_killed", "driver_killed", "tune_driver_killed", "node_killed", "shard_truncated",
              "aim_restarted", "checkpoint_unwritable")

    def run(self, fault: str) -> FaultOutcome:
        outcome = getattr(self, fault)()
        outcome.fault = fault
        return outcome


SWEEP_DRIVER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import ray
    from mmplatform.sweep.config import build_sweep_config
    from mmplatform.sweep.runner import run_sweep
    tree, storage, summary = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    hooks = os.environ.get("MMPLATFORM_TEST_HOOKS")
    # The job's runtime env reaches the trial drivers, which forward the hooks to their workers.
    ray.init(address=os.environ["RAY_ADDRESS"],
             runtime_env={"env_vars": {"MMPLATFORM_TEST_HOOKS": hooks}} if hooks else None)
    result = run_sweep(build_sweep_config(tree), storage)
    summary.write_text(json.dumps(result, default=str))
    """
)


def truncate_first_shard(split_dir: Path) -> Path:
    """Cut the split's first shard to half its size, in place (the manifest still lists the full size)."""
    from data_pipelines.manifest import load_manifest

    manifest = load_manifest(split_dir)
    path = manifest.shard_path(manifest.shards[0])
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size // 2)
    return path


@contextlib.contextmanager
def unwritable(directory: Path):
    """Make ``directory`` unwritable for this process, root included, and restore it afterwards.

    ``chmod`` alone does not stop root (CAP_DAC_OVERRIDE ignores the mode bits), and neither a
    read-only bind mount nor a tmpfs can be made here without privileges. The immutable attribute
    (``chattr +i``, ext4/xfs/btrfs) does stop root: no entry can be created, renamed or removed
    in the directory. So: ``chmod a-w`` (enough for other users) plus ``chattr +i`` as root.
    Yields how it was done; raises if the directory is still writable (a filesystem without
    the attribute), so a caller never reports a fault that was not injected.
    """
    mode = directory.stat().st_mode
    directory.chmod(mode & 0o555)
    immutable = False
    try:
        if os.geteuid() == 0:
            immutable = subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0
        probe = directory / ".write-probe"
        try:
            probe.touch()
        except OSError:
            pass
        else:
            probe.unlink()
            raise RuntimeError(f"could not make {directory} unwritable (chattr +i unsupported here?)")
        yield "chattr +i" if immutable else "chmod a-w"
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(mode)
