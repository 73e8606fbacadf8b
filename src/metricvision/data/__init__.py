"""Datasets, readers for native formats, samplers and transforms."""
from metricvision.data.sample import DATASETS, Sample, SampleDataset, check_class_disjoint, load_image, relabel

__all__ = ["DATASETS", "Sample", "SampleDataset", "check_class_disjoint", "load_image", "relabel"]
