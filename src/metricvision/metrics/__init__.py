"""Metrics: pure functions over ranked lists and relevance, plus evaluation protocols.

``PROTOCOLS[name](embed_fn, splits, **opts)`` runs a benchmark protocol end to end; the
functions below work on precomputed embeddings.
"""
from metricvision.metrics import classes, reid, revisited, verification  # noqa: F401 (protocol registration)
from metricvision.metrics.classes import few_shot_accuracy, incremental_scores, open_set_f_measure, open_set_scores, shot_accuracy
from metricvision.metrics.clustering import cluster_scores
from metricvision.metrics.evaluate import evaluate_retrieval, retrieval_scores
from metricvision.metrics.protocols import PROTOCOLS, embed, evaluate_dataset, model_embed_fn
from metricvision.metrics.reid import reid_scores
from metricvision.metrics.retrieval import hits_from_labels, map_at_r, r_precision, recall_at_k
from metricvision.metrics.revisited import average_precision, mean_average_precision, revisited_scores
from metricvision.metrics.verification import fpr_at_recall, kfold_accuracy, tar_at_far

__all__ = [
    "PROTOCOLS", "average_precision", "cluster_scores", "embed", "evaluate_dataset", "evaluate_retrieval", "few_shot_accuracy",
    "fpr_at_recall", "hits_from_labels", "incremental_scores", "kfold_accuracy", "map_at_r", "mean_average_precision", "model_embed_fn",
    "open_set_f_measure", "open_set_scores", "r_precision", "recall_at_k", "reid_scores", "retrieval_scores",
    "revisited_scores", "shot_accuracy", "tar_at_far",
]
