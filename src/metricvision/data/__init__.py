"""Datasets (one registry: built-in datasets and readers of native formats), samplers and transforms."""
from metricvision.data.registry import DATASETS, DatasetInfo, check_dataset, register_dataset
from metricvision.data.sample import Sample, SampleDataset, check_class_disjoint, load_image, relabel
from metricvision.data import emoji, fashion, glyphs, icons, readers  # noqa: E402,F401  (registers the built-in datasets)

__all__ = ["DATASETS", "DatasetInfo", "Sample", "SampleDataset", "check_class_disjoint", "check_dataset", "load_image",
           "register_dataset", "relabel"]
