"""metricvision: learning, evaluating and searching visual representations with metric learning."""
from metricvision.data import Sample, SampleDataset
from metricvision.index import FlatIndex
from metricvision.losses import LossOutput, MetricLoss, ProxyLoss, create_loss
from metricvision.metrics import evaluate_retrieval
from metricvision.models import Embedder
from metricvision.similarity import IGNORED, IRRELEVANT, RELEVANT, relevance_from_labels, similarity

__version__ = "0.1.0"

__all__ = [
    "Embedder", "FlatIndex", "IGNORED", "IRRELEVANT", "LossOutput", "MetricLoss", "ProxyLoss",
    "RELEVANT", "Sample", "SampleDataset", "create_loss", "evaluate_retrieval",
    "relevance_from_labels", "similarity",
]
