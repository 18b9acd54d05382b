"""ASHA over the fixed-fusion baselines (PoE, MoE, MoPoE, mmJSD) on MIMIC-CXR (thesis variant).

Same profiles and flags as sweeps/mimic_fmean.py (``--source DIR`` builds the shards on first
use); the space is the thesis's for the standard models: beta, latent size, learning rate.
"""

from mmplatform.sweep.script import main
from mmplatform.sweep.studies import baselines_study

STUDY = baselines_study("mimic", latent_dims=[512])

if __name__ == "__main__":
    main(STUDY)
