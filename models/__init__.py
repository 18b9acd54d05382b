"""Multimodal VAEs: the model, its aggregators, distributions, networks and objective.

Public API::

    from models import MultimodalVAE, ObjectiveOutput, build_aggregator, AGGREGATORS
"""

from models.aggregators import AGGREGATORS, Aggregation, Aggregator, build_aggregator, register_aggregator
from models.objective import ObjectiveOutput
from models.vae import MultimodalVAE

__all__ = [
    "AGGREGATORS",
    "Aggregation",
    "Aggregator",
    "MultimodalVAE",
    "ObjectiveOutput",
    "build_aggregator",
    "register_aggregator",
]
