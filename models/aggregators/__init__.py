"""Aggregator registry: importing this package registers every aggregator by name.

Use ``build_aggregator(name, num_modalities, latent_dim, **options)``; see ``base`` for the
interface every aggregator implements.
"""

from importlib import import_module

from models.aggregators.base import (
    AGGREGATORS,
    Aggregation,
    Aggregator,
    SubsetPosterior,
    build_aggregator,
    register_aggregator,
)

FIXED_FUSION_MODULES: tuple[str, ...] = ("poe", "moe", "mopoe", "mmjsd", "avg")

# ---------------------------------------------------------------------------------------
# Learnable f-mean aggregators (thesis, seed 000, ch. 4): add the module names here as the
# modules land, i.e. "mofop", "mopgfm", "mogfm_amortized", "iwmogfm".
# ---------------------------------------------------------------------------------------
F_MEAN_MODULES: tuple[str, ...] = ("mofop", "mopgfm", "mogfm_amortized", "iwmogfm")

for _module in FIXED_FUSION_MODULES + F_MEAN_MODULES:
    import_module(f"{__name__}.{_module}")

__all__ = ["AGGREGATORS", "Aggregation", "Aggregator", "SubsetPosterior", "build_aggregator", "register_aggregator"]
