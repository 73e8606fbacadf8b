"""Readers for benchmarks' native on-disk layouts, registered in the one dataset registry.

``DATASETS.create(name, path=root)`` reads a dataset into {split name: [Sample]};
``check_dataset(name, path)`` also checks that every image exists. Readers never download.
"""
from metricvision.data.readers import category, classification, generic, instance, pairs  # noqa: F401 (registration)
from metricvision.data.readers.base import DatasetFormatError, load_plain_pickle
from metricvision.data.sample import crop_to_box

__all__ = ["DatasetFormatError", "crop_to_box", "load_plain_pickle"]
