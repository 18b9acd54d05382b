"""Model-family registry: importing this package registers every family by name.

See ``base`` for what a family declares; ``model_family(name)`` looks one up.
"""

from importlib import import_module

from models.families.base import (
    FAMILIES,
    Abilities,
    ModelFamily,
    ModelRequest,
    Stage,
    StagedModel,
    StageSchedule,
    model_family,
    register_family,
)

for _module in ("aggregator", "mmvm", "jnf"):
    import_module(f"{__name__}.{_module}")

__all__ = [
    "FAMILIES", "Abilities", "ModelFamily", "ModelRequest", "Stage", "StagedModel", "StageSchedule",
    "model_family", "register_family",
]
