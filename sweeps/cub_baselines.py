"""ASHA over the fixed-fusion baselines (PoE, MoE, MoPoE, mmJSD) on CUB image-captions.

Same profiles and flags as sweeps/cub_fmean.py (``--source DIR`` builds the shards on first
use); the space is the thesis's for the standard models: beta, latent size, learning rate.
"""

from mmplatform.sweep.script import main
from mmplatform.sweep.studies import baselines_study

STUDY = baselines_study("cub", latent_dims=[128, 256])

if __name__ == "__main__":
    main(STUDY)
