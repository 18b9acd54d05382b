"""ASHA over the fixed-fusion baselines (PoE, MoE, MoPoE, mmJSD) on PolyMNIST-3.

Same profiles and flags as sweeps/polymnist_fmean.py; the space is the thesis's for the
standard models (seed 000, section 5.4): beta, latent size, learning rate.
"""

from mmplatform.sweep.profiles import Study
from mmplatform.sweep.script import main
from mmplatform.sweep.search_space import Choice, LogUniform, Uniform

STUDY = Study(
    name="polymnist_baselines",
    aggregators=("poe", "moe", "mopoe", "mmjsd"),
    search_space={
        "model.beta": Uniform(low=0.5, high=4.0),
        "model.latent_dim": Choice(values=[512, 1280]),
        "training.learning_rate": LogUniform(low=1e-4, high=1e-3),
    },
)

if __name__ == "__main__":
    main(STUDY)
