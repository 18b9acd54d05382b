"""ASHA over the learnable f-mean aggregators on CUB image-captions.

    python sweeps/cub_fmean.py --source DIR      # first use: builds the shards from the official files
    ray job submit --address http://HEAD:8265 --working-dir . -- python sweeps/cub_fmean.py --profile cluster

The thesis's f-mean space (Table 5.1) with MMVM's CUB latent (128, or twice that on a cluster)
and betas (2^-2 .. 2^2). The colour-group metrics need CUB_200_2011's attribute file; the
release (cub.zip) has none, and a sweep on it is refused before it starts, naming the metrics.
"""

from mmplatform.sweep.script import main
from mmplatform.sweep.studies import fmean_study

STUDY = fmean_study("cub", latent_dims=[128, 256])

if __name__ == "__main__":
    main(STUDY)
