"""ASHA over the fixed-fusion baselines (PoE, MoE, MoPoE, mmJSD) on PolyMNIST-3.

Same profiles and flags as sweeps/polymnist_fmean.py; the space is the thesis's for the
standard models (seed 000, section 5.4): beta, latent size, learning rate.
"""

from mmplatform.sweep.script import main
from mmplatform.sweep.studies import baselines_study

STUDY = baselines_study("polymnist", latent_dims=[512, 1280])

if __name__ == "__main__":
    main(STUDY)
