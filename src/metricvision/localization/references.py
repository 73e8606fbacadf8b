"""Reference embeddings for the hubness correction of ``query_detector_model_crops``: the clean renderings of
known identities, in the image model's space, from an array, a file or a registered dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from metricvision.kb.model import ImageTextModel


def load_references(references: Any, model: ImageTextModel) -> torch.Tensor:
    """Reference embeddings -> (N, D) L2-normalized float tensor in ``model``'s space. ``references``: an (N, D)
    array; an .npz (key ``embeddings``, as ``metricvision embed`` writes) or .npy file; or "DATASET[:SPLIT]" (a
    registered dataset, split ``train`` by default) whose images ``model`` embeds."""
    if isinstance(references, (str, Path)):
        path = Path(references)
        if path.suffix in (".npz", ".npy"):
            if not path.is_file():
                raise FileNotFoundError(f"references {path} not found (an .npz from `metricvision embed`, or an .npy)")
            loaded = np.load(path)
            references = loaded["embeddings"] if path.suffix == ".npz" else loaded
        else:
            from metricvision.data import DATASETS

            name, _, split = str(references).partition(":")
            splits = DATASETS.create(name)
            if (split or "train") not in splits:
                raise ValueError(f"references {references!r}: dataset {name} has splits {sorted(splits)}, not {split!r}")
            references = model.encode_images([s.image for s in splits[split or "train"]]).numpy()
    x = torch.as_tensor(np.asarray(references, np.float32))
    if x.ndim != 2 or x.shape[1] != model.dim or len(x) == 0:
        raise ValueError(f"references must be (N >= 1, {model.dim}) embeddings in the model's space, got shape {tuple(x.shape)}")
    return torch.nn.functional.normalize(x, dim=1)
