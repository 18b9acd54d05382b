"""The thesis's two studies, for any registered dataset (seed 000, sections 5.4 and 6.1).

A sweep script is one study on one dataset: ``fmean_study`` searches the learnable f-mean
aggregators (beta, number of flows, coupling-block layers and width, latent size, learning
rate: Table 5.1), ``baselines_study`` the fixed-fusion ones (beta, latent size, learning rate).
Only the latent sizes differ between datasets (PolyMNIST 512/1280 as in the thesis, CelebA
MoPoE's 32 shared dimensions and twice that, CUB MMVM's 128 and twice that, MIMIC-CXR the
thesis's 512, its f-means swept against MoPoE); a dataset's
descriptor may narrow a profile's space (``ProfileDefaults.space``), e.g. to MMVM's CUB betas.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmplatform.sweep.profiles import Study
from mmplatform.sweep.search_space import Choice, Grid, LogUniform, Uniform

F_MEAN_AGGREGATORS = ("mofop", "mopgfm", "mogfm_amortized", "iwmogfm")
FAMILIES_COMPARED = ("aggregator", "jnf", "jnf_dcca", "mmvm")
"""The model families the families study compares; ``aggregator`` runs as MoPoE."""
BASELINE_AGGREGATORS = ("poe", "moe", "mopoe", "mmjsd")


def fmean_study(dataset: str, latent_dims: Sequence[int], against: Sequence[str] = ()) -> Study:
    """``against``: fixed-fusion aggregators run in the same sweep as references (the flows'
    options are searched for the f-means only: ``SweepConfig.trial_config``)."""
    unknown = [name for name in against if name not in BASELINE_AGGREGATORS]
    if unknown:
        raise ValueError(f"{unknown} are not fixed-fusion aggregators ({', '.join(BASELINE_AGGREGATORS)})")
    return Study(
        name=f"{dataset}_fmean",
        dataset=dataset,
        aggregators=F_MEAN_AGGREGATORS + tuple(against),
        search_space={
            "model.beta": Uniform(low=0.0, high=4.0),
            "model.aggregator_options.num_flows": Choice(values=[1, 2, 3, 4]),
            "model.aggregator_options.coupling_layers": Choice(values=[2, 4, 8]),
            "model.aggregator_options.coupling_width": Choice(values=[64, 128, 256, 512]),
            "model.latent_dim": Choice(values=list(latent_dims)),
            "training.learning_rate": LogUniform(low=1e-4, high=1e-3),
        },
    )


def baselines_study(dataset: str, latent_dims: Sequence[int]) -> Study:
    return Study(
        name=f"{dataset}_baselines",
        dataset=dataset,
        aggregators=BASELINE_AGGREGATORS,
        search_space={
            "model.beta": Uniform(low=0.5, high=4.0),
            "model.latent_dim": Choice(values=list(latent_dims)),
            "training.learning_rate": LogUniform(low=1e-4, high=1e-3),
        },
    )


def families_study(dataset: str, latent_dims: Sequence[int]) -> Study:
    """JNF, JNF-DCCA and MMVM against MoPoE (the ``aggregator`` family), each with its own options at
    their defaults (``models.families``), on the same data, budget and search space.

    Evaluated by what every family produces, whatever the profile (coherence, latent probe, PRD;
    MMVM has no log p(X)), and ranked by the mean of missing-modality coherence and latent accuracy.
    The dataset's profile may fix the latent size (PolyMNIST's local profile: 512). ASHA compares trials at the same epoch;
    a JNF trial fits its unimodal encoders only in its second half (seed 002, Algorithm 1), so a rung
    before that judges untrained unimodal posteriors: give the sweep a grace period of at least
    half its epochs (``--grace-period``) when that matters.
    """
    return Study(
        name=f"{dataset}_families",
        dataset=dataset,
        aggregators=("mopoe",),
        search_space={
            # A grid: every sample of the other values trains every family (equal trials per family).
            "model.family": Grid(values=list(FAMILIES_COMPARED)),
            "model.beta": Uniform(low=0.5, high=4.0),
            "model.latent_dim": Choice(values=list(latent_dims)),
            "training.learning_rate": LogUniform(low=1e-4, high=1e-3),
        },
        evaluation={"metrics": ["coherence", "latent_probe", "prd"],
                    "objective_weights": {"coherence_missing": 1.0, "latent_accuracy": 1.0}},
    )
