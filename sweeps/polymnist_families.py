"""JNF, JNF-DCCA and MMVM against MoPoE on PolyMNIST-3: the model families in one ASHA sweep.

    ray job submit --address http://HEAD:8265 --working-dir . -- python sweeps/polymnist_families.py --profile cluster
    python sweeps/polymnist_families.py              # embedded default: local Ray, local Aim, offline data

Every sample of beta, the latent size and the learning rate trains each of the four families
(``model.family`` is a grid; ``aggregator`` runs MoPoE), so ``--num-samples N`` runs 4 N trials;
each family's own options keep their defaults (``models.families``).
Latent 64 (JNF's CelebA size, seed 002; MoPoE, MMVM and JNF alike) on the cluster: JNF's unimodal
MAF encoders are sampled one dimension at a time, so 512 makes every evaluation sample 512
sequential passes. The local profile keeps PolyMNIST's local latent of 512 (the dataset's
descriptor fixes it). Trials are evaluated by coherence, latent probe and PRD and ranked by the
mean of missing-modality coherence and latent accuracy, which every family produces.
"""

from mmplatform.sweep.script import main
from mmplatform.sweep.studies import families_study

STUDY = families_study("polymnist", latent_dims=[64])

if __name__ == "__main__":
    main(STUDY)
