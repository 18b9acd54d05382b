"""The main job: ASHA over the learnable f-mean aggregators on PolyMNIST-3.

    ray job submit --address http://HEAD:8265 --working-dir . -- python sweeps/polymnist_fmean.py --profile cluster
    python sweeps/polymnist_fmean.py                 # embedded default: local Ray, local Aim, offline data

The search space is the thesis's (seed 000, sections 5.4 and 6.1, Table 5.1): beta, the
number of flows, coupling-block layers, coupling width, latent size (512 or 1280) and learning rate.
"""

from mmplatform.sweep.script import main
from mmplatform.sweep.studies import fmean_study

STUDY = fmean_study("polymnist", latent_dims=[512, 1280])

if __name__ == "__main__":
    main(STUDY)
