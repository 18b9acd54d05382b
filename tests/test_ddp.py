"""Data-parallel training: 2 ranks equal 1, replicas stay equal, and a NaN on one rank is skipped by both.

- **2 workers on a global batch = 1 worker on the same batch.** The training step of the
  worker loop (``train_one_epoch``: forward, backward, the divergence guard, fused Adam) runs
  in 2 gloo processes wrapped in ``DistributedDataParallel`` (what ``ray.train.torch.prepare_model``
  does on CPU), each on its half of the global batches that the real ``TrainReader`` reads, and in
  one process on the whole batches. The parameters must agree within ``EQUIVALENCE_ATOL``.
  The reparameterization noise is replaced by a fixed pattern that does not depend on the batch
  split (the only test double here): random draws of a B/2 batch on each rank can never equal the
  draws of one B batch, which would otherwise make the runs differ by far more than rounding.
- **Replicas identical after every step, and a NaN on one rank only.** A real 2-worker Ray Train
  run of the worker loop with the ``MMPLATFORM_TEST_HOOKS`` hooks: each rank records a SHA-256 of
  its parameters after every step, and rank 1's loss is NaN at one step. Both ranks must skip that
  step, hold the same guard count, and hold bitwise identical parameters after every step.
"""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import torch

from mmplatform.config import build_config
from mmplatform.training.checkpointing import TrainingState
from mmplatform.training.test_hooks import HOOKS_ENV

GLOBAL_BATCH, STEPS, SEED = 8, 5, 11
EQUIVALENCE_ATOL = 2e-6
"""Largest |parameter difference| accepted between 2 ranks x 4 and 1 rank x 8 after 5 fused-Adam
steps (lr 5e-4). They cannot be bitwise equal: the gradient is averaged over the ranks (all-reduce
sum, then / 2) instead of within one batch mean, and the convolutions run on batches of 4 instead
of 8, so float32 sums are taken in another order. Measured on the 2-core CI machine: 4.1e-7 at
most (one conv weight; most tensors 0-3e-8), with parameters of magnitude up to 0.35 that the 5
steps moved by up to 2.5e-3. A rank training on its half alone (its gradient not averaged with the
other's) ends 4.5e-3 away from the single rank: 2000x the tolerance. (Adam and clipping are
invariant to the gradient's scale, so a sum instead of a mean over the ranks would not show here.)"""


def equivalence_tree(shards: Path, batch_size: int) -> dict:
    return {
        "name": "ddp-equivalence",
        "data": {"path": str(shards), "batch_size": batch_size, "steps_per_epoch": STEPS, "loader_workers": 0},
        # PoE: no random mixture components, so with the fixed noise a step is deterministic.
        "model": {"aggregator": "poe", "latent_dim": 8},
        "training": {"seed": SEED},
    }


def fixed_noise(*size, dtype=None, device=None, **_):
    """Stands in for ``torch.randn``: the same values for every sample (a pattern over the last
    dimension only), so that splitting a batch between ranks does not change anyone's noise."""
    shape = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size
    pattern = torch.linspace(-1.5, 1.5, shape[-1], dtype=dtype or torch.get_default_dtype(), device=device)
    return pattern.expand(*shape).clone()


def rank_half(batch, rank: int, world_size: int):
    from data_pipelines.readers import Batch

    size = batch.labels.shape[0] // world_size
    part = slice(rank * size, (rank + 1) * size)
    return Batch({name: tensor[part] for name, tensor in batch.inputs.items()}, batch.labels[part], batch.keys[part])


def train_steps(rank: int, world_size: int, shards: str, port: int, out_dir: str) -> None:
    """One rank (or the single process) of the equivalence run; writes its final parameters."""
    import numpy as np
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from data_pipelines.manifest import load_manifest
    from data_pipelines.readers import TrainReader
    from mmplatform.training.divergence import DivergenceGuard
    from mmplatform.training.model_factory import build_model
    from mmplatform.training.worker import train_one_epoch

    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        config = build_config(equivalence_tree(Path(shards), GLOBAL_BATCH // world_size))
        manifest = load_manifest(Path(shards) / "train")
        torch.manual_seed(SEED)
        np.random.seed(SEED)
        model = build_model(config, manifest)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.training.learning_rate, fused=True)
        guard = DivergenceGuard(config.training.max_bad_steps, config.training.grad_clip_norm)
        # The global batches, as one rank reads them, cut into the ranks' halves.
        reader = TrainReader(Path(shards) / "train", batch_size=GLOBAL_BATCH, steps_per_epoch=STEPS, seed=SEED,
                             rank=0, world_size=1)
        reader.set_epoch(1)
        batches = [rank_half(batch, rank, world_size) for batch in reader]
        trained = DistributedDataParallel(model) if world_size > 1 else model
        with mock.patch.object(torch, "randn", fixed_noise):
            sums = train_one_epoch(trained, optimizer, guard, batches, torch.device("cpu"), epoch=1)
        assert sums[("steps", "")] == STEPS
        torch.save(model.state_dict(), Path(out_dir) / f"world{world_size}-rank{rank}.pt")
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def test_two_ranks_on_halves_of_the_global_batch_equal_one_rank_on_it(polymnist_shards, tmp_path, one_torch_thread):
    import torch.multiprocessing

    from tests.aim_fixtures import free_port

    torch.multiprocessing.start_processes(
        train_steps, args=(2, str(polymnist_shards), free_port(), str(tmp_path)), nprocs=2, start_method="spawn",
    )
    train_steps(0, 1, str(polymnist_shards), 0, str(tmp_path))
    single = torch.load(tmp_path / "world1-rank0.pt")
    rank0, rank1 = torch.load(tmp_path / "world2-rank0.pt"), torch.load(tmp_path / "world2-rank1.pt")

    initial = build_initial_model(polymnist_shards)
    moved = max(float((single[name] - initial[name]).abs().max()) for name in single)
    assert moved > 100 * EQUIVALENCE_ATOL, "the steps hardly moved the parameters: the comparison would be empty"
    for name in single:
        assert torch.equal(rank0[name], rank1[name]), f"replicas differ in {name}"
        difference = float((rank0[name] - single[name]).abs().max())
        assert difference <= EQUIVALENCE_ATOL, f"{name}: 2 ranks differ from 1 by {difference:.3g}"


def build_initial_model(shards: Path) -> dict:
    import numpy as np

    from data_pipelines.manifest import load_manifest
    from mmplatform.training.model_factory import build_model

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    return build_model(build_config(equivalence_tree(shards, GLOBAL_BATCH)), load_manifest(shards / "train")).state_dict()


# ------------------------------------------------------------------ the worker loop on Ray Train

NAN_AT = {"rank": 1, "epoch": 1, "step": 2}


def test_replicas_stay_identical_and_a_nan_on_one_rank_is_skipped_by_both(
    ray_cluster, polymnist_shards, tmp_path, monkeypatch
):
    from mmplatform.training.launcher import fit

    steps_per_epoch, epochs = 3, 2
    config = build_config({
        "name": "ddp-replicas",
        "storage_path": str(tmp_path / "results"),
        "data": {"path": str(polymnist_shards), "batch_size": 4, "steps_per_epoch": steps_per_epoch,
                 "loader_workers": 0, "eval_batch_size": 32},
        "model": {"aggregator": "mopoe", "latent_dim": 8},
        "training": {"epochs": epochs, "max_bad_steps": 3, "max_failures": 0},
        "evaluation": {"metrics": ["log_likelihood"], "objective_weights": {"log_likelihood": 1.0},
                       "log_likelihood_samples": 1, "sample_limit": 16, "every_n_epochs": epochs},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1.0},
        "tracking": {"repo": str(tmp_path / "aim"), "fallback_dir": str(tmp_path / "fallback")},
    })
    events = tmp_path / "events"
    monkeypatch.setenv(HOOKS_ENV, json.dumps({"events_dir": str(events), "record_steps": True, "nan_loss": NAN_AT}))
    result = fit(config)
    assert result.error is None and result.metrics["status"] == "finished"

    records = {rank: [json.loads(line) for line in (events / f"steps.rank{rank}.jsonl").read_text().splitlines()]
               for rank in (0, 1)}
    expected_steps = [(epoch, step) for epoch in range(1, epochs + 1) for step in range(1, steps_per_epoch + 1)]
    for rank in (0, 1):
        assert [(r["epoch"], r["step"]) for r in records[rank]] == expected_steps
        skipped = [(r["epoch"], r["step"]) for r in records[rank] if not r["stepped"]]
        assert skipped == [(NAN_AT["epoch"], NAN_AT["step"])], f"rank {rank} skipped {skipped}"
    # Bitwise equal replicas after every step, the skipped one included; the same guard count.
    for first, second in zip(records[0], records[1], strict=True):
        assert first == second, f"ranks differ after epoch {first['epoch']} step {first['step']}"
    assert records[0][-1]["bad_steps"] == 1
    assert records[0][0]["digest"] != records[0][-1]["digest"], "the replicas never trained"
    # What Tune and Aim see: the one skipped step, counted once (not once per rank).
    assert result.metrics["bad_steps"] == 1
    run = tmp_path / "results" / "ddp-replicas"
    first_epoch = TrainingState.load(run / "checkpoint_epoch=0001")
    assert first_epoch.metrics["skipped_steps"] == 1 and first_epoch.guard == {"bad_steps": 1}
    assert all(torch.isfinite(p).all() for p in TrainingState.load(run / f"checkpoint_epoch={epochs:04d}").model.values())


def test_a_staged_family_keeps_replicas_identical_across_its_stages(ray_cluster, polymnist_shards, tmp_path, monkeypatch):
    """JNF-DCCA on 2 DDP workers: each stage trains another parameter group, so each stage wraps
    the model in DDP anew (DDP registers the trained parameters when built). The replicas stay
    bitwise equal through every step of every stage, and every stage moves them."""
    from mmplatform.training.launcher import fit

    steps_per_epoch, epochs = 2, 3
    config = build_config({
        "name": "ddp-stages",
        "storage_path": str(tmp_path / "results"),
        "data": {"path": str(polymnist_shards), "batch_size": 4, "steps_per_epoch": steps_per_epoch,
                 "loader_workers": 0, "eval_batch_size": 32},
        "model": {"family": "jnf_dcca", "latent_dim": 4,
                  "family_options": {"dcca_epochs": 1, "joint_epochs": 1, "dcca_dim": 2, "flow_steps": 1,
                                     "flow_width": 8, "posterior_samples": 2, "hmc_burn_in": 2}},
        "training": {"epochs": epochs, "max_failures": 0, "checkpoints_to_keep": epochs},
        "evaluation": {"metrics": ["latent_probe"], "objective_weights": {"latent_accuracy": 1.0},
                       "probe_train_samples": 16, "sample_limit": 16, "every_n_epochs": epochs},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1.0},
        "tracking": {"repo": str(tmp_path / "aim"), "fallback_dir": str(tmp_path / "fallback")},
    })
    events = tmp_path / "events"
    monkeypatch.setenv(HOOKS_ENV, json.dumps({"events_dir": str(events), "record_steps": True}))
    result = fit(config)
    assert result.error is None and result.metrics["status"] == "finished"
    records = {rank: [json.loads(line) for line in (events / f"steps.rank{rank}.jsonl").read_text().splitlines()]
               for rank in (0, 1)}
    assert len(records[0]) == epochs * steps_per_epoch
    for first, second in zip(records[0], records[1], strict=True):
        assert first == second, f"ranks differ after epoch {first['epoch']} step {first['step']}"
    digests = [record["digest"] for record in records[0]]
    assert len(set(digests)) == len(digests), "a step of some stage did not train"
    run = tmp_path / "results" / "ddp-stages"
    assert [TrainingState.load(run / f"checkpoint_epoch={e:04d}").stage for e in (1, 2, 3)] == ["dcca", "joint", "unimodal"]
