"""The main job: ASHA over the learnable f-mean aggregators on PolyMNIST-3.

    ray job submit --address http://HEAD:8265 --working-dir . -- python sweeps/polymnist_fmean.py --profile cluster
    python sweeps/polymnist_fmean.py                 # embedded default: local Ray, local Aim, offline data

The search space is the thesis's (seed 000, sections 5.4 and 6.1, Table 5.1): beta, the
number of flows, coupling-block layers, coupling width, latent size and learning rate.
"""

from mmplatform.sweep.profiles import Study
from mmplatform.sweep.script import main
from mmplatform.sweep.search_space import Choice, LogUniform, Uniform

STUDY = Study(
    name="polymnist_fmean",
    aggregators=("mofop", "mopgfm", "mogfm_amortized", "iwmogfm"),
    search_space={
        "model.beta": Uniform(low=0.0, high=4.0),
        "model.aggregator_options.num_flows": Choice(values=[1, 2, 3, 4]),
        "model.aggregator_options.coupling_layers": Choice(values=[2, 4, 8]),
        "model.aggregator_options.coupling_width": Choice(values=[64, 128, 256, 512]),
        "model.latent_dim": Choice(values=[512, 1280]),
        "training.learning_rate": LogUniform(low=1e-4, high=1e-3),
    },
)

if __name__ == "__main__":
    main(STUDY)
