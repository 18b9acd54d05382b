"""PRD's two clustering backends against each other, and the reference's own run-to-run spread.

PRD (Sajjadi et al. 2018) clusters with k-means; the reference protocol's code uses scikit-learn's
MiniBatchKMeans(n_init=10) (backend ``sklearn``), the platform batched k-means in torch
(backend ``torch``, ``mmplatform.evaluation.kmeans``). Both are random: a PRD value averaged
over the protocol's 10 runs still moves with the seed. This script measures that spread for
the reference and the torch backend on the same features, how far apart the two backends'
means are in units of it (``bias_in_reference_sd``), and the tolerances of the agreement test
(``tests/test_evaluation_prd.py``) derived from it.

Features: ``tests.prd_fixtures.polymnist_prd_features`` (the test's own): the MoPoE digit
classifier's penultimate layer on real PolyMNIST test images ("real") against a briefly trained
VAE's reconstructions and prior samples, and against real train images (same distribution).
Every PRD evaluation uses the protocol's parameters (20 clusters, 1001 angles, 10 runs,
n_init 10) with seed ``10 x s`` for s = 0..``--seeds``-1 (the sklearn runs of seed s are seeded
s..s+9, so seeds 10 apart share none).

Also the k-means objective (inertia, the sum of squared distances of all points to their
centers) the reference reaches, against the torch backend's (5 Lloyd iterations) and Lloyd run
to convergence, with the PRD values of the latter: why the backend stops at 5 iterations
(``mmplatform.evaluation.kmeans.KMeansSettings``).

    .venv/bin/python benchmarks/prd_agreement.py [--seeds 20] [--out PATH]

Prints one JSON object and writes it to ``--out`` (default
``benchmarks/results/prd_agreement.json``). ``--smoke``: 200 samples per set, a 20-step VAE, 3
seeds, one thread; the same code path. Writes no file unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, machine_facts, parse_with_smoke  # noqa: E402

from mmplatform.evaluation.kmeans import KMeansSettings, kmeans  # noqa: E402
from mmplatform.evaluation.prd import PRDCurve, PRDParameters, prd_from_histograms, prd_summary  # noqa: E402
from tests.prd_fixtures import polymnist_prd_features  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "prd_agreement.json"
PAIRS = ("reconstructed", "prior", "real_train")
"""Evaluated sets, each against ``real``."""
VALUES = ("score", "f_8", "f_1_8")
TOLERANCE_IN_SD = 4.0
"""The agreement test's tolerance, in reference standard deviations (test module docstring)."""
CONVERGED = KMeansSettings(max_iter=100, tol=0.0)


def statistics(values: np.ndarray) -> dict:
    """Per PRD value: mean, standard deviation (ddof 1), min, max over seeds."""
    return {name: {"mean": float(column.mean()), "sd": float(column.std(ddof=1)),
                   "min": float(column.min()), "max": float(column.max())}
            for name, column in zip(VALUES, values.T)}


def converged_summary(evaluated: np.ndarray, real: np.ndarray, seed: int) -> list[float]:
    """PRD as the torch backend computes it, but with Lloyd run to convergence."""
    union = torch.from_numpy(np.concatenate([evaluated, real]))[None]
    labels = kmeans(union, 20, 10, [seed], CONVERGED).labels[0].numpy()
    curves = [prd_from_histograms(np.bincount(run[:len(evaluated)], minlength=20) / len(evaluated),
                                  np.bincount(run[len(evaluated):], minlength=20) / len(real), 1001) for run in labels]
    curve = PRDCurve(np.mean([c.precision for c in curves], axis=0), np.mean([c.recall for c in curves], axis=0))
    return [curve.score(), curve.max_f_beta(8.0), curve.max_f_beta(1.0 / 8.0)]


def inertias(evaluated: np.ndarray, real: np.ndarray, seeds: int) -> dict:
    """Mean (sd) k-means inertia over ``seeds`` x 10 clusterings of the union, per method."""
    from sklearn.cluster import MiniBatchKMeans

    union = np.concatenate([evaluated, real])
    reference = [MiniBatchKMeans(n_clusters=20, n_init=10, random_state=seed).fit(union.astype(np.float64)).inertia_
                 for seed in range(10 * seeds)]
    torch_union = torch.from_numpy(union)[None]
    default = torch.cat([kmeans(torch_union, 20, 10, [10 * s]).inertia.flatten() for s in range(seeds)])
    converged = torch.cat([kmeans(torch_union, 20, 10, [10 * s], CONVERGED).inertia.flatten() for s in range(seeds)])
    return {name: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1))}
            for name, v in (("sklearn", reference), ("torch", default.numpy()), ("torch_converged", converged.numpy()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20, help="PRD evaluations per backend and pair")
    parser.add_argument("--inertia-seeds", type=int, default=5, help="seeds (x 10 runs) of the inertia comparison")
    parser.add_argument("--samples", type=int, default=1000, help="features per set (<= 1,000)")
    parser.add_argument("--vae-steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS), help="the JSON file written")
    args = parse_with_smoke(parser, {"samples": 200, "vae_steps": 20, "seeds": 3, "inertia_seeds": 1, "threads": 1})
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        features = polymnist_prd_features(Path(tmp) / "polymnist", samples=args.samples, vae_steps=args.vae_steps)
    real = features["real"]
    pairs = {}
    with threadpool_limits(args.threads):
        for pair in PAIRS:
            evaluated = features[pair]
            values, seconds = {}, {}
            for backend in ("sklearn", "torch"):
                start = time.perf_counter()
                rows = []
                for s in range(args.seeds):
                    summary = prd_summary(evaluated, real, PRDParameters(seed=10 * s, clustering=backend))
                    rows.append([summary.score, summary.f_8, summary.f_1_8])
                seconds[backend] = (time.perf_counter() - start) / args.seeds
                values[backend] = np.array(rows)
            values["torch_converged"] = np.array([converged_summary(evaluated, real, 10 * s) for s in range(args.seeds)])
            reference = statistics(values["sklearn"])
            row = {backend: statistics(v) for backend, v in values.items()}
            row["bias_in_reference_sd"] = {
                backend: {name: (row[backend][name]["mean"] - reference[name]["mean"]) / max(reference[name]["sd"], 1e-12)
                          for name in VALUES}
                for backend in ("torch", "torch_converged")
            }
            # The agreement test compares one evaluation of each backend at seed 0.
            row["seed0_gap_in_reference_sd"] = {
                name: float(abs(values["torch"][0, i] - values["sklearn"][0, i]) / max(reference[name]["sd"], 1e-12))
                for i, name in enumerate(VALUES)
            }
            row["test_tolerance"] = {name: TOLERANCE_IN_SD * reference[name]["sd"] for name in VALUES}
            row["seconds_per_evaluation"] = seconds
            row["speedup"] = seconds["sklearn"] / seconds["torch"]
            row["inertia"] = inertias(evaluated, real, args.inertia_seeds)
            pairs[pair] = row
            print(pair, {k: round(v, 3) for k, v in row["bias_in_reference_sd"]["torch"].items()}, file=sys.stderr, flush=True)

    emit({
        "benchmark": "prd_agreement",
        "smoke": args.smoke,
        "pairs": pairs,
        "seeds": args.seeds,
        "inertia_seeds": args.inertia_seeds,
        "samples": args.samples,
        "vae_steps": args.vae_steps,
        "threads": args.threads,
        "tolerance_in_reference_sd": TOLERANCE_IN_SD,
        "features": "tests.prd_fixtures.polymnist_prd_features: MoPoE digit classifier penultimate layer (128-d) of "
                    "real test images vs VAE reconstructions, VAE prior samples and real train images",
        **machine_facts(),
    }, args.out)


if __name__ == "__main__":
    main()
