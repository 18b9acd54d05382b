"""PolyMNIST (MoPoE, Sutter et al. 2021, Appendix D.1): M images of one MNIST digit on different
backgrounds. ``builder`` writes the shards from the official release or generates them offline
(``generator``, ``mnist_source``, ``backgrounds``); ``descriptor`` registers the dataset."""

from data_pipelines.polymnist.builder import DEFAULT_SAMPLES_PER_SHARD, build_polymnist, export_png_release

__all__ = ["DEFAULT_SAMPLES_PER_SHARD", "build_polymnist", "export_png_release"]
