"""metricvision: learning, evaluating and searching visual representations with metric learning.

The public names below are imported on first use, so that ``import metricvision`` (and the
``metricvision`` command's start-up) does not import torch.
"""
from typing import TYPE_CHECKING

from metricvision._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "Sample": "metricvision.data", "SampleDataset": "metricvision.data", "FlatIndex": "metricvision.index",
    "LossOutput": "metricvision.losses", "MetricLoss": "metricvision.losses", "ProxyLoss": "metricvision.losses",
    "create_loss": "metricvision.losses", "evaluate_retrieval": "metricvision.metrics", "Embedder": "metricvision.models",
    "IGNORED": "metricvision.similarity", "IRRELEVANT": "metricvision.similarity", "RELEVANT": "metricvision.similarity",
    "relevance_from_labels": "metricvision.similarity", "similarity": "metricvision.similarity",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs: the names as eager imports would give them
    from metricvision.data import Sample, SampleDataset  # noqa: F401
    from metricvision.index import FlatIndex  # noqa: F401
    from metricvision.losses import LossOutput, MetricLoss, ProxyLoss, create_loss  # noqa: F401
    from metricvision.metrics import evaluate_retrieval  # noqa: F401
    from metricvision.models import Embedder  # noqa: F401
    from metricvision.similarity import IGNORED, IRRELEVANT, RELEVANT, relevance_from_labels, similarity  # noqa: F401
