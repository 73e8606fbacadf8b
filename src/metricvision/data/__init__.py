"""Datasets, readers for native formats, samplers and transforms (names imported on first use)."""
from typing import TYPE_CHECKING

from metricvision._lazy import lazy_exports

_EXPORTS = {name: "metricvision.data.sample" for name in
            ("DATASETS", "Sample", "SampleDataset", "check_class_disjoint", "load_image", "relabel")}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs: the names as eager imports would give them
    from metricvision.data.sample import DATASETS, Sample, SampleDataset, check_class_disjoint, load_image, relabel  # noqa: F401
