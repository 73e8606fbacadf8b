"""Where relevance comes from in each supervision setting."""
from metricvision.supervision.base import SUPERVISIONS, Supervision, Targets, keep_fraction_of_labels
from metricvision.supervision.propagation import LabelPropagation, propagate_labels

__all__ = ["SUPERVISIONS", "LabelPropagation", "Supervision", "Targets", "keep_fraction_of_labels", "propagate_labels"]
