"""ASHA over the learnable f-mean aggregators against MoPoE on MIMIC-CXR (frontal, lateral, findings).

    python sweeps/mimic_fmean.py --source DIR      # first use: builds the thesis variant from MIMIC-CXR-JPG
    ray job submit --address http://HEAD:8265 --working-dir . -- python sweeps/mimic_fmean.py --profile cluster

The thesis's MIMIC-CXR comparison (seed 000, Table 5.2): mofop, mopgfm, mogfm_amortized and iwmogfm
with MoPoE in the same sweep (the flows' options are searched for the f-means only), latent 512,
learning rate 5e-4. MIMIC-CXR is credentialed data: the runs track aggregate metrics only, no
image or text, unless ``tracking.log_restricted_samples`` is set.
"""

from mmplatform.sweep.script import main
from mmplatform.sweep.studies import fmean_study

STUDY = fmean_study("mimic", latent_dims=[512], against=["mopoe"])

if __name__ == "__main__":
    main(STUDY)
