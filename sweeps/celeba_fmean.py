"""ASHA over the learnable f-mean aggregators on bimodal CelebA (image + attribute text).

    python sweeps/celeba_fmean.py --source DIR      # first use: builds the shards from the official files
    ray job submit --address http://HEAD:8265 --working-dir . -- python sweeps/celeba_fmean.py --profile cluster

The thesis's f-mean space (Table 5.1) with MoPoE's CelebA latent: 32 shared dimensions (or 64)
plus 32 style dimensions per modality (the dataset's descriptor sets the style latents).
"""

from mmplatform.sweep.script import main
from mmplatform.sweep.studies import fmean_study

STUDY = fmean_study("celeba", latent_dims=[32, 64])

if __name__ == "__main__":
    main(STUDY)
