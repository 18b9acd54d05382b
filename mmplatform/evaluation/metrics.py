"""The evaluation metrics, registered once: the one place each metric's name and facts live.

A ``Metric`` says what config validation, the launcher's preflight, the evaluator and the sweeps
need to know: its name (an entry of ``evaluation.metrics``), whether it needs the coherence
classifiers, which label kinds it can score (``single`` classes or ``multi`` attributes), the
``EvaluationConfig`` options it reads, the flat value a sweep may weigh in its objective, and the
column the sweep's closing table shows. The evaluator's accumulators register against these
names (``mmplatform.evaluation.accumulators``); a metric without one is an error, never skipped.

A metric that cannot apply to a dataset (accuracy on multi-label attributes) is refused by
``check_metrics`` before any Ray resource is requested, naming the metric, the dataset and the
metric that does apply. This module imports no torch: the config imports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    summary: str
    result: str
    """``MetricRecord.name`` of its values (contexts say which value: kind, subset, modality)."""
    label_kinds: frozenset[str]
    needs_classifiers: bool
    objective_key: str
    """The flat result (``MetricRecord.flat_name``) a sweep's ``objective_weights`` may name."""
    headline: str
    """Its column title in the closing table of a sweep."""
    options: tuple[str, ...] = ()
    """``EvaluationConfig`` fields it reads."""
    needs_labels: bool = True
    """Whether it compares with the tuples' labels. One that needs neither labels nor classifiers
    (which train on labels) also scores a dataset built without labels (label kind ``none``)."""

    def scores(self, label_kind: str) -> bool:
        """Whether it can score data with labels of ``label_kind``."""
        if label_kind == NO_LABELS:
            return not (self.needs_labels or self.needs_classifiers)
        return label_kind in self.label_kinds


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} registered twice")
    METRICS[metric.name] = metric
    return metric


SINGLE, MULTI, NO_LABELS = "single", "multi", "none"
"""Label kinds, as in the manifests (``data_pipelines.manifest.LABEL_KINDS``)."""
ANY_LABELS = frozenset({SINGLE, MULTI})

PROBE_OPTIONS = ("probe_train_samples", "probe_model", "probe_forest_trees", "probe_forest_depth")
"""What every latent probe reads: its training rows and its classifier."""

LATENT_PROBE = register_metric(Metric(
    "latent_probe", "accuracy of a logistic regression on each subset posterior's mean",
    "latent_accuracy",
    frozenset({SINGLE}), needs_classifiers=False, objective_key="latent_accuracy", headline="latent acc",
    options=PROBE_OPTIONS,
))
LATENT_PROBE_AP = register_metric(Metric(
    "latent_probe_ap", "average precision per attribute of logistic regressions on each subset posterior's mean",
    "latent_ap",
    frozenset({MULTI}), needs_classifiers=False, objective_key="latent_ap", headline="latent AP",
    options=PROBE_OPTIONS,
))
COHERENCE = register_metric(Metric(
    "coherence", "accuracy of the classes of generated samples (conditional per subset, and random)",
    "coherence",
    frozenset({SINGLE}), needs_classifiers=True, objective_key="coherence_missing", headline="coh. missing",
    options=("random_coherence_samples",),
))
COHERENCE_AP = register_metric(Metric(
    "coherence_ap", "average precision per attribute of generated samples (conditional per subset)",
    "coherence_ap",
    frozenset({MULTI}), needs_classifiers=True, objective_key="coherence_ap_missing", headline="coh. AP missing",
))
# MMVM scores CUB's colour groups (and MIMIC-CXR's findings) by AUROC next to average precision.
LATENT_PROBE_AUROC = register_metric(Metric(
    "latent_probe_auroc", "area under the ROC curve per attribute of the latent probes (as latent_probe_ap)",
    "latent_auroc",
    frozenset({MULTI}), needs_classifiers=False, objective_key="latent_auroc", headline="latent AUROC",
    options=PROBE_OPTIONS,
))
COHERENCE_AUROC = register_metric(Metric(
    "coherence_auroc", "area under the ROC curve per attribute of generated samples (conditional per subset)",
    "coherence_auroc",
    frozenset({MULTI}), needs_classifiers=True, objective_key="coherence_auroc_missing",
    headline="coh. AUROC missing",
))
PRD = register_metric(Metric(
    "prd", "precision-recall of generated vs real image features (Sajjadi et al. 2018)",
    "prd",
    ANY_LABELS, needs_classifiers=True, objective_key="prd", headline="PRD",
    options=("prd_samples", "prd_clusters", "prd_angles", "prd_runs", "prd_clustering", "feature_extractor_weights"),
    needs_labels=False,
))
LOG_LIKELIHOOD = register_metric(Metric(
    "log_likelihood", "importance-sampled log p(X) of the test tuples",
    "log_likelihood",
    ANY_LABELS, needs_classifiers=False, objective_key="log_likelihood", headline="log p(X)",
    options=("log_likelihood_samples",), needs_labels=False,
))


def unknown_metrics(names: Iterable[str]) -> list[str]:
    return sorted(set(names) - set(METRICS))


def objective_keys(names: Iterable[str]) -> dict[str, str]:
    """Objective key -> metric name, for the metrics ``names``."""
    return {METRICS[name].objective_key: name for name in names}


def needs_classifiers(names: Iterable[str]) -> bool:
    return any(METRICS[name].needs_classifiers for name in names)


def check_metrics(names: Iterable[str], objective_weights: Mapping[str, float], dataset: str, label_kind: str) -> None:
    """Refuse metrics the dataset's labels cannot score and objective keys no metric produces.

    Raises ``ValueError`` with a one-line message naming the field, metric and dataset."""
    names = list(names)
    for name in names:
        metric = METRICS[name]
        if metric.scores(label_kind):
            continue
        alternatives = [m.name for m in METRICS.values() if m.scores(label_kind) and m.name != name]
        if label_kind == NO_LABELS:
            reason = "labels" if metric.needs_labels else "coherence classifiers, which train on labels"
            raise ValueError(
                f"evaluation.metrics: {name!r} ({metric.summary}) needs {reason}; dataset {dataset!r} was built "
                f"without labels; metrics that apply: {', '.join(alternatives)}"
            )
        raise ValueError(
            f"evaluation.metrics: {name!r} ({metric.summary}) needs {'/'.join(sorted(metric.label_kinds))}-label "
            f"data; dataset {dataset!r} has {label_kind}-label data; metrics that apply: {', '.join(alternatives)}"
        )
    produced = objective_keys(names)
    unknown = sorted(key for key, weight in objective_weights.items() if weight > 0 and key not in produced)
    if unknown:
        raise ValueError(
            f"evaluation.objective_weights: {unknown} are produced by none of evaluation.metrics {names}; "
            f"available: {sorted(produced)}"
        )


def headline_columns() -> dict[str, str]:
    """Flat key -> column title of every metric, in registration order, for the sweep's closing table."""
    return {metric.objective_key: metric.headline for metric in METRICS.values()}
