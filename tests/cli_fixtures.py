"""Running the platform's commands as a user does (a subprocess in the repository root) and
reading what they print: shared by the tests of every dataset's whole path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MMPLATFORM = (sys.executable, "-m", "mmplatform")


def run_command(args, env=None, timeout: float = 600, command=MMPLATFORM) -> subprocess.CompletedProcess:
    """``mmplatform ARGS`` (or ``command ARGS``) with the test's environment plus ``env``."""
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={**os.environ, **(env or {})})


def one_line_error(completed: subprocess.CompletedProcess) -> str:
    """The user error a command ended with: exit status 2, one line, no traceback."""
    assert completed.returncode == 2, completed.stderr[-2000:]
    error = completed.stderr.strip()
    assert "\n" not in error and "Traceback" not in error, error
    return error


def last_json_block(stdout: str) -> dict:
    """The JSON object a command printed last (Ray streams worker log lines to stdout too)."""
    return json.loads(stdout[[m.start() for m in re.finditer(r"^\{", stdout, re.M)][-1]:])


def train_classifiers(ray_cluster, shards: Path, out: Path) -> dict:
    """``mmplatform classifiers train`` for one epoch, ungated, on the test cluster; its report."""
    completed = run_command(["classifiers", "train", "--data", str(shards), "--out", str(out), "--max-epochs", "1",
                             "--min-score", "0", "--batch-size", "16"], env=ray_cluster.client_env())
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = last_json_block(completed.stdout)
    assert (out / "classifiers.pt").exists() and (out / "classifiers.json").exists()
    return report
