"""Cost of the f-mean aggregators against MoPoE: full training steps on CPU (GitHub issue 5).

Model: PolyMNIST-3 (three 3x28x28 image modalities, Laplace likelihood), random inputs in
[0, 1], Adam. Settings of Table 5.1 (seed 000):

============== ====== ============================================= ===== =====
aggregator     latent flow (backend freia_allinone)                  K     beta
============== ====== ============================================= ===== =====
mopoe          1280   --                                            1     2
mofop          1280   1 flow, 8 coupling layers, width 64           1     2
mopgfm         1280   same as mofop (for f_mu and f_sigma)          1     2
mogfm_amortized 1280  4 flows, 2 coupling layers, width 512         1     0
iwmogfm        1280   4 flows, 2 coupling layers, width 512         2     0.001
============== ====== ============================================= ===== =====

For each aggregator, in the same process:

* ``flop_per_step``: ``torch.utils.flop_counter.FlopCounterMode`` over one training step
  (forward, backward, Adam; matmuls and convolutions, as FlopCounterMode counts);
* ``step_s``: seconds per training step, the best of ``--repeats`` windows of ``--steps``
  steps. Windows are interleaved across aggregators (round robin) so that load from other
  processes on a shared machine hits every aggregator alike. The FLOP-counting step runs the
  same kernels on the same shapes first and serves as warm-up (``--warmup`` adds more);
* ``flop_per_s`` = ``flop_per_step / step_s``;
* ``step_time_vs_mopoe`` and ``flop_rate_vs_mopoe``: the ratios to MoPoE's;
* ``step_cpu_s`` / ``flop_rate_vs_mopoe_cpu_time``: the same from process CPU time (all
  threads), a cross-check that is less sensitive to other processes than wall time.

The target of issue 5 is waste, not size: the sample-based aggregators decode every subset
(``C = S = 7`` components, times K), so their steps are several times MoPoE's, but they
should run at >= 80% of MoPoE's FLOP/s.

``ceiling_fraction`` is the FLOP rate over the best fp32 matmul rate (``train_step.matmul_gflops``,
wall time), ``ceiling_fraction_cpu`` the same in CPU seconds.

Prints one JSON object and writes it to ``--out`` (default
``benchmarks/results/aggregator_cost.json``).

``--smoke``: all five aggregators at batch 4, latent 64, one timed window of one step, a 512x512
matmul ceiling, one thread; the same ratios to MoPoE. Writes no file unless ``--out`` is given.

    .venv/bin/python benchmarks/aggregator_cost.py [--batch-size 256] [--steps 1] [--repeats 3]
        [--aggregators mopoe,mofop,...] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import emit, machine_facts, parse_with_smoke  # noqa: E402

from train_step import flops_per_sample, matmul_gflops, training_step  # noqa: E402

from data_pipelines.modality import ModalitySpec  # noqa: E402
from models import MultimodalVAE  # noqa: E402

NUM_MODALITIES = 3
LATENT_DIM = 1280

# Table 5.1 (seed 000): model keyword arguments per aggregator.
CONFIGS: dict[str, dict] = {
    "mopoe": dict(beta=2.0, num_importance_samples=1),
    "mofop": dict(
        beta=2.0,
        num_importance_samples=1,
        aggregator_options=dict(flow_backend="freia_allinone", num_flows=1, coupling_layers=8, coupling_width=64),
    ),
    "mopgfm": dict(
        beta=2.0,
        num_importance_samples=1,
        aggregator_options=dict(flow_backend="freia_allinone", num_flows=1, coupling_layers=8, coupling_width=64),
    ),
    "mogfm_amortized": dict(
        beta=0.0,
        num_importance_samples=1,
        aggregator_options=dict(flow_backend="freia_allinone", num_flows=4, coupling_layers=2, coupling_width=512),
    ),
    "iwmogfm": dict(
        beta=0.001,
        num_importance_samples=2,
        aggregator_options=dict(
            flow_backend="freia_allinone", num_flows=4, coupling_layers=2, coupling_width=512, proxy_samples=2
        ),
    ),
}


def build_model(name: str, channels_last: bool, latent_dim: int = LATENT_DIM) -> MultimodalVAE:
    specs = [ModalitySpec(f"m{i}", "image", (3, 28, 28), "uint8", "laplace") for i in range(NUM_MODALITIES)]
    model = MultimodalVAE(specs, name, latent_dim=latent_dim, **CONFIGS[name])
    return model.to(memory_format=torch.channels_last) if channels_last else model


def make_batch(batch_size: int, channels_last: bool) -> dict[str, torch.Tensor]:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return {
        f"m{i}": torch.rand(batch_size, 3, 28, 28).contiguous(memory_format=memory_format)
        for i in range(NUM_MODALITIES)
    }


def timed_window(model, optimizer, batch, steps: int) -> tuple[float, float]:
    """Wall and process-CPU seconds per step (CPU time is less sensitive to other processes)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        training_step(model, optimizer, batch, True)
    return (time.perf_counter() - start) / steps, (time.process_time() - start_cpu) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--aggregators", default=",".join(CONFIGS), help="comma-separated; mopoe is always included")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1, help="training steps per timed window")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows per aggregator (best is kept)")
    parser.add_argument(
        "--warmup", type=int, default=0, help="untimed steps per aggregator besides the FLOP-counting step (which warms up)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-channels-last", action="store_true", help="keep NCHW (default: channels-last)")
    parser.add_argument("--latent-dim", type=int, default=LATENT_DIM, help="Table 5.1: 1280")
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the square matmul of the ceiling")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "aggregator_cost.json"),
                        help="the JSON file written")
    args = parse_with_smoke(parser, {"batch_size": 4, "steps": 1, "repeats": 1, "latent_dim": 64, "matmul_size": 512,
                                             "threads": 1})

    names = [n for n in args.aggregators.split(",") if n]
    unknown = set(names) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown aggregators {sorted(unknown)}; choose from {list(CONFIGS)}")
    names = ["mopoe"] + [n for n in names if n != "mopoe"]

    torch.set_num_threads(args.threads)
    channels_last = not args.no_channels_last
    batch = make_batch(args.batch_size, channels_last)

    models, optimizers, flops = {}, {}, {}
    for name in names:
        torch.manual_seed(0)
        models[name] = build_model(name, channels_last, args.latent_dim)
        flops[name] = flops_per_sample(models[name], batch, True, args.batch_size) * args.batch_size
        optimizers[name] = torch.optim.Adam(models[name].parameters(), lr=1e-3)
        for _ in range(args.warmup):
            training_step(models[name], optimizers[name], batch, True)

    # matmul_gflops gives (GFLOP per wall second, GFLOP per CPU second); best of before and after.
    ceiling, cpu_ceiling = (value * 1e9 for value in matmul_gflops(args.matmul_size))
    best = {name: float("inf") for name in names}
    best_cpu = {name: float("inf") for name in names}
    for _ in range(args.repeats):  # round robin: shared-machine load hits all alike
        for name in names:
            wall, cpu = timed_window(models[name], optimizers[name], batch, args.steps)
            best[name], best_cpu[name] = min(best[name], wall), min(best_cpu[name], cpu)
    wall_gflops, cpu_gflops = matmul_gflops(args.matmul_size)
    ceiling, cpu_ceiling = max(ceiling, wall_gflops * 1e9), max(cpu_ceiling, cpu_gflops * 1e9)

    base_time, base_rate = best["mopoe"], flops["mopoe"] / best["mopoe"]
    base_cpu_rate = flops["mopoe"] / best_cpu["mopoe"]
    aggregators = {}
    for name in names:
        rate = flops[name] / best[name]
        aggregators[name] = {
            "step_time_vs_mopoe": round(best[name] / base_time, 3),
            "flop_rate_vs_mopoe": round(rate / base_rate, 3),
            "step_s": round(best[name], 4),
            "flop_per_step": int(flops[name]),
            "flop_per_s": round(rate, 1),
            "ceiling_fraction": round(rate / ceiling, 4),
            # The same from process CPU time (all threads): less sensitive to a shared machine.
            "step_cpu_s": round(best_cpu[name], 4),
            "flop_rate_vs_mopoe_cpu_time": round(flops[name] / best_cpu[name] / base_cpu_rate, 3),
            "ceiling_fraction_cpu": round(flops[name] / best_cpu[name] / cpu_ceiling, 4),
            "parameters": sum(p.numel() for p in models[name].parameters()),
            "settings": {"latent_dim": args.latent_dim, **CONFIGS[name]},
        }
    result = {
        "benchmark": "aggregator_cost",
        "smoke": args.smoke,
        "modalities": NUM_MODALITIES,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "threads": args.threads,
        "channels_last": channels_last,
        "aggregators": aggregators,
        "below_80pct_flop_rate": [n for n, r in aggregators.items() if r["flop_rate_vs_mopoe"] < 0.8],
        "matmul_gflops": round(ceiling / 1e9, 1),
        "matmul_gflop_per_cpu_s": round(cpu_ceiling / 1e9, 1),
        "matmul_size": args.matmul_size,
    }
    emit({**result, **machine_facts()}, args.out)


if __name__ == "__main__":
    main()
