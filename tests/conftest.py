"""Shared fixtures: tiny datasets built in memory from the shipped emoji file."""
from __future__ import annotations

from typing import List, Tuple

import pytest
import torch

from metricvision.data import Sample, relabel

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def emoji_small() -> Tuple[List[Sample], List[Sample]]:
    """(train, test): 24 train and 16 test identities of the shipped emoji dataset, train relabelled."""
    from metricvision.data.emoji import load_emoji

    def first(samples: List[Sample], n: int) -> List[Sample]:
        keep = sorted({s.label for s in samples})[:n]
        return [s for s in samples if s.label in keep]

    return relabel(first(load_emoji("train"), 24)), first(load_emoji("test"), 16)
