"""Gradient variance of the two mixture component selections (issue 18, item 2).

The MoPoE-style mixtures choose which subset (MoE: which expert) each training sample is drawn
from. ``random`` draws the component independently per sample; ``stratified`` (the MoPoE/mmJSD
code's ``mixture_component_selection``) gives every component an equal contiguous share of the
batch (``models.aggregators.mixture``). Both are unbiased for the mixture's loss over shuffled
batches; this script measures which one gives the less noisy gradient, the criterion for the
option's default (``mixture.DEFAULT_COMPONENT_SELECTION``).

Setting: three 1x8x8 modalities, each a fixed binary template of the tuple's label (10 classes)
plus noise 0.1, the generic MLP networks, Gaussian likelihood (scale 0.3), latent 8, beta 1,
K = 1 (closed-form divergence); the model is first trained ``--train-steps`` Adam steps
(random selection) so that the subset posteriors differ, as they do in training. Then, on one
fixed batch of ``--batch-size`` tuples (84: a multiple of the 7 subsets and of the 3 experts,
so that the shares are equal), the gradient of the training loss w.r.t. all encoder parameters
is computed ``--seeds`` times per option, each time after ``torch.manual_seed(seed)`` (the same
seeds for both options):

* ``shuffled`` (the headline): the batch's order is permuted by the seed, as the data loader's
  shuffle does; both estimators then have the same expectation (checked: ``mean_gap_z``);
* ``fixed``: the batch in one order: ``stratified`` then always gives the same tuple the same
  subset, so only the reparameterization noise is left (and its mean gradient is that of a fixed
  assignment, not the mixture's: ``mean_gap_z`` shows the difference).

The gradient variance is the trace of the gradients' covariance over seeds,
``sum_i ||g_i - mean g||^2 / (n - 1)``; ``variance_ratio`` is stratified / random, with a 95%
bootstrap interval over seeds (``ratio_ci95``, 2,000 resamples). ``mean_gap_z`` is
``||mean g_stratified - mean g_random||^2`` divided by its expectation when both means are equal
(``(tr_s + tr_r) / n``): about 1 when the two estimate the same gradient. The result and the
default it led to are written at ``models.aggregators.mixture.DEFAULT_COMPONENT_SELECTION``.

    .venv/bin/python benchmarks/component_selection.py [--seeds 200] [--aggregators mopoe,moe,mmjsd] [--out PATH]

Prints one JSON object and writes it to ``--out`` (default
``benchmarks/results/component_selection.json``). ``--smoke``: 8 seeds, 5 training steps, batch
21, MoPoE only, one thread; the same code path and ratios. Writes no file unless ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit, machine_facts, parse_with_smoke  # noqa: E402

from data_pipelines.modality import ModalitySpec  # noqa: E402
from models import MultimodalVAE  # noqa: E402
from models.aggregators.mixture import COMPONENT_SELECTIONS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NUM_MODALITIES, CLASSES, DATA_SIZE = 3, 10, 512
BOOTSTRAP = 2000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--aggregators", default="mopoe,moe,mmjsd", help="comma-separated; the first is the headline")
    parser.add_argument("--seeds", type=int, default=200, help="gradients per option and order")
    parser.add_argument("--batch-size", type=int, default=84, help="a multiple of 7 (MoPoE subsets) and 3 (MoE/mmJSD experts): equal shares")
    parser.add_argument("--train-steps", type=int, default=200, help="Adam steps before measuring (random selection)")
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "component_selection.json", help="the JSON file written")
    return parse_with_smoke(parser, {"seeds": 8, "train_steps": 5, "batch_size": 21, "aggregators": "mopoe", "threads": 1}, argv)


def toy_data() -> dict[str, torch.Tensor]:
    """Each modality: its own fixed binary template of the label, plus Gaussian noise 0.1."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(DATA_SIZE) % CLASSES
    data = {}
    for m in range(NUM_MODALITIES):
        templates = (torch.rand(CLASSES, 1, 8, 8, generator=generator) > 0.5).float()
        data[f"m{m}"] = templates[labels] + 0.1 * torch.randn(DATA_SIZE, 1, 8, 8, generator=generator)
    return data


def trained_model(aggregator: str, data: dict[str, torch.Tensor], args: argparse.Namespace) -> MultimodalVAE:
    torch.manual_seed(0)
    specs = [ModalitySpec(f"m{i}", "image", (1, 8, 8), "float32", "gaussian") for i in range(NUM_MODALITIES)]
    model = MultimodalVAE(
        specs, aggregator, {"component_selection": "random"}, latent_dim=args.latent_dim, beta=1.0,
        networks={spec.name: "mlp_image" for spec in specs},
        likelihood_options={spec.name: {"scale": 0.3} for spec in specs},
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(args.train_steps):
        index = torch.randint(0, DATA_SIZE, (64,), generator=generator)
        loss = model({name: value[index] for name, value in data.items()}).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.train()
    return model


def gradients(model: MultimodalVAE, batch: dict[str, torch.Tensor], selection: str, shuffled: bool, seeds: int) -> np.ndarray:
    """``[seeds, P]`` gradients of the loss w.r.t. the encoder parameters, one per seed."""
    model.aggregator.component_selection = selection
    parameters = list(model.encoders.parameters())
    size = next(iter(batch.values())).shape[0]
    rows = []
    for seed in range(seeds):
        order = torch.randperm(size, generator=torch.Generator().manual_seed(10_000 + seed)) if shuffled else torch.arange(size)
        torch.manual_seed(seed)
        loss = model({name: value[order] for name, value in batch.items()}).loss
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, parameters)]).double().numpy())
    return np.stack(rows)


def total_variance(gram: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Trace of the covariance of the rows weighted by ``counts`` ``[R, n]`` (bootstrap
    resamples), from the Gram matrix: ``(sum c_i |g_i|^2 - |sum c_i g_i|^2 / n) / (n - 1)``."""
    n = counts.shape[1]
    squares = counts @ np.diag(gram)
    sums = np.einsum("ri,ij,rj->r", counts, gram, counts)
    return (squares - sums / n) / (n - 1)


def compare(grads: dict[str, np.ndarray]) -> dict:
    random_g, stratified_g = grads["random"], grads["stratified"]
    n = random_g.shape[0]
    variances = {name: float(total_variance(g @ g.T, np.ones((1, n)))[0]) for name, g in grads.items()}
    rng = np.random.default_rng(0)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=BOOTSTRAP).astype(np.float64)
    boot = total_variance(stratified_g @ stratified_g.T, counts) / total_variance(random_g @ random_g.T, counts)
    gap = stratified_g.mean(0) - random_g.mean(0)
    return {
        "gradient_variance": {name: round(value, 6) for name, value in variances.items()},
        "variance_ratio": round(variances["stratified"] / variances["random"], 4),
        "ratio_ci95": [round(float(v), 4) for v in np.quantile(boot, [0.025, 0.975])],
        "mean_gap_z": round(float(gap @ gap / ((variances["stratified"] + variances["random"]) / n)), 3),
        "mean_gradient_norm": round(float(np.linalg.norm(random_g.mean(0))), 6),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = toy_data()
    batch = {name: value[: args.batch_size] for name, value in data.items()}  # labels 0..9 cycling
    aggregators = args.aggregators.split(",")
    results = {}
    for aggregator in aggregators:
        model = trained_model(aggregator, data, args)
        results[aggregator] = {
            order: compare({s: gradients(model, batch, s, order == "shuffled", args.seeds) for s in COMPONENT_SELECTIONS})
            for order in ("shuffled", "fixed")
        }
    headline = results[aggregators[0]]["shuffled"]
    emit({
        "benchmark": "component_selection",
        "settings": {
            "aggregators": aggregators, "seeds": args.seeds, "batch_size": args.batch_size,
            "train_steps": args.train_steps, "latent_dim": args.latent_dim, "threads": args.threads,
            "subsets": 2**NUM_MODALITIES - 1, "parameters": "encoders", "variance": "trace of the covariance over seeds",
        },
        "headline": f"{aggregators[0]}, shuffled batch order",
        "variance_ratio": headline["variance_ratio"],
        "gradient_variance": headline["gradient_variance"],
        "results": results,
        "seconds": round(time.perf_counter() - start, 1),
        **machine_facts(),
    }, args.out)


if __name__ == "__main__":
    main()
