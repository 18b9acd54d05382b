"""How many training steps before a PolyMNIST latent encodes the digit (why the CPU thesis
comparison of issue 5 stays at chance).

``benchmarks/thesis_comparison.py`` trains the seven methods of Table 5.1 (seed 000) on
PolyMNIST-3 at a CPU budget; all of them end near chance (0.1) in latent accuracy and
coherence. This script measures why, on the same generated data and the same networks, by
training small cases side by side and probing the latent every ``--probe-every`` steps:

* ``linear probe``: the platform's latent probe (logistic regression) from the unimodal posterior means of 1,000 train
  tuples to the digit, scored on the 1,000 test tuples (one number per modality; the thesis's
  latent accuracy, Table 6.1, on unimodal subsets);
* ``divergence``: the batch's KL term in nats (how much the latent is used at all);
* ``nll``: the reconstruction term per modality.

Cases (``CASES``; the first is the thesis's setting, the baseline of the others):

==================== =========== ============ ================== =====
case                 backgrounds modalities   likelihood         beta
==================== =========== ============ ================== =====
thesis_mopoe          procedural  3 (MoPoE)   Laplace, scale .75  2
solid_laplace         solid       1           Laplace, scale .75  1
solid_laplace_sharp   solid       1           Laplace, scale .1   1
solid_gaussian        solid       1           Gaussian, scale .1  1
gaussian_mopoe        procedural  3 (MoPoE)   Gaussian, scale .1  2
solid_gaussian_mopoe  solid       3 (MoPoE)   Gaussian, scale .1  2
==================== =========== ============ ================== =====

"solid" replaces the textures by one flat dark colour per modality, so the digit is all there
is to encode: if a case does not learn the digit there, backgrounds are not the reason.

The loop is a plain in-process loop over in-memory tensors, not the platform's Ray Train path:
it measures learning dynamics, and keeps the probe cheap enough to run often. Everything
else (data builder, networks, aggregators, likelihoods) is the platform's.

    .venv/bin/python benchmarks/latent_emergence.py [--steps 500] [--cases thesis_mopoe,...] [--out PATH]

Prints one JSON object and writes it to ``--out`` (default ``benchmarks/results/latent_emergence.json``).
The data is built under ``--work-dir`` (default ``/tmp/latent_emergence``, kept for later runs).

``--smoke``: the baseline ``thesis_mopoe`` and ``solid_laplace`` (both kinds of background),
100 digits per split, 4 steps of batch 16, a probe every 2 steps on 50 train tuples, latent 16, one thread;
the data goes to a temporary folder, removed afterwards, unless ``--work-dir``. Writes no file
unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import emit, machine_facts, parse_with_smoke  # noqa: E402

from data_pipelines.polymnist.backgrounds import write_solid_backgrounds  # noqa: E402
from data_pipelines.polymnist import build_polymnist  # noqa: E402
from data_pipelines.readers import EvalReader  # noqa: E402
from mmplatform.evaluation.latent_probe import ProbeSettings, fit_probes  # noqa: E402
from models import MultimodalVAE  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

NUM_MODALITIES = 3


@dataclasses.dataclass(frozen=True)
class Case:
    backgrounds: str  # "procedural" (the platform default) or "solid"
    modalities: int
    likelihood: str
    scale: float
    beta: float
    aggregator: str = "mopoe"


CASES: dict[str, Case] = {
    "thesis_mopoe": Case("procedural", 3, "laplace", 0.75, 2.0),
    "solid_laplace": Case("solid", 1, "laplace", 0.75, 1.0),
    "solid_laplace_sharp": Case("solid", 1, "laplace", 0.1, 1.0),
    "solid_gaussian": Case("solid", 1, "gaussian", 0.1, 1.0),
    "gaussian_mopoe": Case("procedural", 3, "gaussian", 0.1, 2.0),
    "solid_gaussian_mopoe": Case("solid", 3, "gaussian", 0.1, 2.0),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/latent_emergence"),
                        help="where the data is built and kept for later runs (--smoke: a temporary folder)")
    parser.add_argument("--digits", type=int, default=None, help="tuples per split of the built data (default: all)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--probe-every", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=5e-4, help="Table 5.1")
    parser.add_argument("--latent-dim", type=int, default=64, help="as the CPU thesis comparison")
    parser.add_argument("--probe-train-samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "latent_emergence.json", help="the JSON file written")
    args = parse_with_smoke(parser, {
        "cases": "thesis_mopoe,solid_laplace", "work_dir": None, "digits": 100, "steps": 4, "probe_every": 2,
        "batch_size": 16, "probe_train_samples": 50, "latent_dim": 16, "threads": 1,
    }, argv)
    unknown = [c for c in args.cases.split(",") if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    return args


def dataset(kind: str, work_dir: Path, digits: int | None = None) -> Path:
    """PolyMNIST-3 with the procedural textures, or with flat backgrounds written here."""
    root = work_dir / f"polymnist_{kind}" if digits is None else work_dir / f"polymnist_{kind}_{digits}"
    backgrounds = write_solid_backgrounds(work_dir / "solid_backgrounds", NUM_MODALITIES) if kind == "solid" else None
    # Progress goes to stderr: stdout carries the one JSON result.
    build_polymnist(root, modalities=NUM_MODALITIES, seed=0, digits=digits, backgrounds=backgrounds, progress=False,
                    log=lambda line: print(line, file=sys.stderr, flush=True))
    return root


def load_split(split_dir: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor, list]:
    reader = EvalReader(split_dir, batch_size=500)
    inputs: dict[str, list[torch.Tensor]] = {}
    labels = []
    for batch in reader:
        for name, tensor in batch.inputs.items():
            inputs.setdefault(name, []).append(tensor)
        labels.append(batch.labels)
    return {k: torch.cat(v) for k, v in inputs.items()}, torch.cat(labels), list(reader.modalities)


def probe(model: MultimodalVAE, train: dict, train_labels: torch.Tensor, test: dict, test_labels: torch.Tensor) -> list[float]:
    """Test accuracy of the platform's linear probe on each modality's posterior mean."""
    model.eval()
    with torch.no_grad():
        train_mu, _ = model.encode(train)  # [M, N, D]
        test_mu, _ = model.encode(test)
    model.train()
    # 500 iterations (the platform's evaluation uses 1000): cheap enough to probe every 250 steps.
    probes = fit_probes(train_mu.transpose(0, 1).numpy(), train_labels.numpy(), ProbeSettings(max_iter=500))
    return [round(float(p.hits(test_mu[m].numpy(), test_labels.numpy()).mean()), 3) for m, p in enumerate(probes)]


def run_case(name: str, case: Case, data: dict, args: argparse.Namespace) -> dict:
    train, train_labels, test, test_labels, specs = data[case.backgrounds]
    specs = [dataclasses.replace(spec, likelihood=case.likelihood) for spec in specs[: case.modalities]]
    names = [spec.name for spec in specs]
    train = {k: train[k] for k in names}
    test = {k: test[k] for k in names}
    torch.manual_seed(args.seed)
    model = MultimodalVAE(specs, aggregator=case.aggregator, latent_dim=args.latent_dim, beta=case.beta,
                          likelihood_options={k: {"scale": case.scale} for k in names})
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    generator = torch.Generator().manual_seed(args.seed)
    n_train = train_labels.shape[0]
    probe_train = {k: v[: args.probe_train_samples] for k, v in train.items()}
    probe_labels = train_labels[: args.probe_train_samples]
    curve = []
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        rows = torch.randint(0, n_train, (args.batch_size,), generator=generator)
        output = model({k: v[rows] for k, v in train.items()})
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        if step % args.probe_every == 0 or step == args.steps:
            point = {"step": step, "linear_probe": probe(model, probe_train, probe_labels, test, test_labels),
                     "divergence": round(float(output.terms["divergence"]), 2),
                     "nll": {k: round(float(output.modality_terms["nll"][k]), 1) for k in names}}
            curve.append(point)
            print(f"{name} step {step}: probe {point['linear_probe']} divergence {point['divergence']} "
                  f"nll {point['nll']}", file=sys.stderr, flush=True)
    final = curve[-1]
    return {"case": dataclasses.asdict(case), "curve": curve, "final_probe_mean": round(float(np.mean(final["linear_probe"])), 3),
            "final_divergence": final["divergence"], "wall_s": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        return run(args)
    with tempfile.TemporaryDirectory(prefix="latent-emergence-") as work_dir:
        args.work_dir = Path(work_dir)
        return run(args)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    cases = args.cases.split(",")
    data = {}
    for kind in sorted({CASES[c].backgrounds for c in cases}):
        root = dataset(kind, args.work_dir, args.digits)
        train, train_labels, specs = load_split(root / "train")
        test, test_labels, _ = load_split(root / "test")
        data[kind] = (train, train_labels, test, test_labels, specs)
    results = {name: run_case(name, CASES[name], data, args) for name in cases}
    emit({
        "benchmark": "latent_emergence",
        "smoke": args.smoke,
        "digits": args.digits,
        "steps": args.steps, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
        "latent_dim": args.latent_dim, "chance": 0.1,
        "baseline": "thesis_mopoe",
        "cases": results,
        **machine_facts(),
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
