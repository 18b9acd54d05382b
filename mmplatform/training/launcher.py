"""Launch one training on Ray Train V2 (``TorchTrainer``), locally or on the cluster in RAY_ADDRESS."""

from __future__ import annotations

import ray
import ray.train
from ray.train.torch import TorchTrainer

from data_pipelines.manifest import load_manifest
from mmplatform.config import TrainConfig, check_against_cluster
from mmplatform.evaluation.session import check_classifiers
from mmplatform.ray_runtime import ensure_ray
from mmplatform.evaluation.metrics import needs_classifiers
from mmplatform.training.model_factory import check_aggregator, selected_networks, selected_specs
from mmplatform.training.test_hooks import forwarded_env
from mmplatform.training.worker import train_loop_per_worker


def check_config_fits_dataset(config: TrainConfig) -> None:
    """The config against the dataset's shards: name, modalities, likelihoods, networks, metrics
    its labels can score, and the aggregator built once with its options."""
    manifest = load_manifest(config.data.root() / "train")
    specs, _ = selected_specs(config, manifest)
    selected_networks(config, specs)
    check_aggregator(config, len(specs))
    load_manifest(config.data.root() / "test")


def preflight(config: TrainConfig) -> None:
    """Every check that needs no Ray resource: the dataset fit, then the classifiers."""
    check_config_fits_dataset(config)
    if needs_classifiers(config.evaluation.metrics):
        check_classifiers(config)


def build_trainer(config: TrainConfig, callbacks=(), aim_run_hash: str | None = None) -> TorchTrainer:
    config = config.with_resolved_paths()
    scaling = config.scaling
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.model_dump(mode="json"), "aim_run_hash": aim_run_hash},
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=config.name,
            storage_path=config.resolved_storage_path(),
            failure_config=ray.train.FailureConfig(max_failures=config.training.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.training.checkpoints_to_keep),
            callbacks=list(callbacks),
            # Empty unless a test set MMPLATFORM_TEST_HOOKS (mmplatform.training.test_hooks).
            worker_runtime_env={"env_vars": forwarded_env()} if forwarded_env() else None,
        ),
    )


def user_error_of(error: BaseException) -> BaseException | None:
    """The user error (``mmplatform.user_errors``: a damaged shard, an unwritable checkpoint
    directory, ...) that made a worker of a failed training fail, if one did."""
    from mmplatform.user_errors import user_error_types

    for failure in (getattr(error, "worker_failures", None) or {}).values():
        # Ray Train wraps each worker's exception with its traceback text (UserExceptionWithTraceback)
        # and keeps the original as ``_base_exc``.
        original = getattr(failure, "_base_exc", failure)
        if isinstance(original, user_error_types()):
            return original
    return None


def fit_trainer(trainer: TorchTrainer) -> ray.train.Result:
    """``trainer.fit()``, re-raising a worker's user error itself (one line for the CLI and a
    sweep's trial) instead of Ray's ``WorkerGroupError``, whose text is the workers' tracebacks."""
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as error:
        named = user_error_of(error)
        if named is None:
            raise
        raise named from error


def fit(config: TrainConfig) -> ray.train.Result:
    """Validate, then train. Rerunning with the same ``name`` and storage resumes."""
    preflight(config)
    check_against_cluster(config, ensure_ray())
    return fit_trainer(build_trainer(config))
