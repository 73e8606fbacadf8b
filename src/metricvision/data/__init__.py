"""Datasets (one registry: built-in datasets and readers of native formats), samplers and transforms.

Names are imported on first use, so that importing the package does not import torch; the
registry imports the built-in datasets on its first lookup.
"""
from typing import TYPE_CHECKING

from metricvision._lazy import lazy_exports

_EXPORTS = {
    **{name: "metricvision.data.registry" for name in ("DATASETS", "DatasetInfo", "check_dataset", "register_dataset")},
    **{name: "metricvision.data.sample" for name in ("Sample", "SampleDataset", "check_class_disjoint", "load_image", "relabel")},
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs: the names as eager imports would give them
    from metricvision.data.registry import DATASETS, DatasetInfo, check_dataset, register_dataset  # noqa: F401
    from metricvision.data.sample import Sample, SampleDataset, check_class_disjoint, load_image, relabel  # noqa: F401
