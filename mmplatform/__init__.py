"""mmplatform: Ray Train/Tune, evaluation and Aim tracking for multimodal VAEs.

The package is named ``mmplatform``, not ``platform``: a top-level ``platform`` package
would shadow Python's standard module under Ray's working dir (see README).
"""

__version__ = "0.1.0"
