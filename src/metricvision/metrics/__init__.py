"""Metrics: pure functions over ranked lists and relevance, plus evaluation protocols."""
from metricvision.metrics.clustering import cluster_scores
from metricvision.metrics.evaluate import evaluate_retrieval
from metricvision.metrics.retrieval import hits_from_labels, map_at_r, r_precision, recall_at_k

__all__ = ["cluster_scores", "evaluate_retrieval", "hits_from_labels", "map_at_r", "r_precision", "recall_at_k"]
