"""Where relevance comes from in each supervision setting."""
# imported for their registrations: "dense_classification", "distillation", "episodic", "icarl", "incremental_metric",
# "class_balanced", "instance", "label_propagation_mean_teacher", "oltr"
from metricvision.supervision import dense, distill, fewshot, icarl, incremental_metric, longtail, mean_teacher, oltr  # noqa: F401
from metricvision.supervision.base import SUPERVISIONS, Supervision, Targets, keep_fraction_of_labels, weighted_pk_batches
from metricvision.supervision.manifold import ManifoldMining, mine_on_manifold
from metricvision.supervision.propagation import LabelPropagation, propagate_labels

__all__ = [
    "SUPERVISIONS", "LabelPropagation", "ManifoldMining", "Supervision", "Targets", "keep_fraction_of_labels",
    "mine_on_manifold", "propagate_labels", "weighted_pk_batches",
]
