"""Evaluation of multimodal VAEs: coherence, latent linear probe, PRD, log-likelihood.

``evaluator.Evaluator`` runs the rank-sharded pass during training; the metric modules are
pure functions checked on constructed cases. ``feature_extractors`` (torch-fidelity) is not
imported here because torch-fidelity takes seconds to import; the evaluator loads it only
when PRD is requested.
"""

from mmplatform.evaluation.coherence import (
    COHERENCE_SCORERS,
    CoherenceCounts,
    CoherenceScorer,
    coherence_scorer,
    coherence_summaries,
    register_coherence_scorer,
)
from mmplatform.evaluation.accumulators import ACCUMULATORS
from mmplatform.evaluation.evaluator import EvaluationOptions, Evaluator
from mmplatform.evaluation.metrics import METRICS, Metric
from mmplatform.evaluation.results import EvaluationResult, MetricRecord
from mmplatform.evaluation.latent_probe import LinearProbe, fit_probes
from mmplatform.evaluation.prd import PRDCurve, PRDParameters, PRDSummary, prd_from_features, prd_summaries, prd_summary

__all__ = [
    "COHERENCE_SCORERS",
    "CoherenceCounts",
    "CoherenceScorer",
    "coherence_scorer",
    "coherence_summaries",
    "register_coherence_scorer",
    "ACCUMULATORS",
    "METRICS",
    "Metric",
    "EvaluationOptions",
    "EvaluationResult",
    "Evaluator",
    "MetricRecord",
    "LinearProbe",
    "fit_probes",
    "PRDCurve",
    "PRDParameters",
    "PRDSummary",
    "prd_from_features",
    "prd_summaries",
    "prd_summary",
]
