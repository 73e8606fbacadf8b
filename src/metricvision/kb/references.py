"""Reference embeddings for the hubness corrections (``query_detector_model_crops``, a KB's text bank): the clean
renderings of known identities, or texts, in the image model's space, from an array, a file or a registered dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from metricvision.kb.model import ImageTextModel

CAPTIONS = "captions:"


def parse_dataset_spec(spec: str) -> Tuple[str, str, Dict[str, str]]:
    """"DATASET[:SPLIT][?KEY=VALUE&...]" -> (dataset, split (default ``train``), the dataset's options)."""
    head, _, query = spec.partition("?")
    name, _, split = head.partition(":")
    options: Dict[str, str] = {}
    for pair in filter(None, query.split("&")):
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ValueError(f"references {spec!r}: options are KEY=VALUE pairs joined by '&', got {pair!r}")
        options[key] = value
    return name, split or "train", options


def dataset_split(spec: str) -> List[Any]:
    """The samples of a "DATASET[:SPLIT][?KEY=VALUE&...]" spec (a registered dataset built with those options)."""
    from metricvision.data import DATASETS

    name, split, options = parse_dataset_spec(spec)
    splits = DATASETS.create(name, **options)
    if split not in splits:
        raise ValueError(f"references {spec!r}: dataset {name} has splits {sorted(splits)}, not {split!r}")
    return splits[split]


def load_references(references: Any, model: ImageTextModel) -> torch.Tensor:
    """Reference embeddings -> (N, D) L2-normalized float tensor in ``model``'s space. ``references``: an (N, D)
    array; an .npz (key ``embeddings``, as ``metricvision embed`` writes) or .npy file; "DATASET[:SPLIT]" (a
    registered dataset, split ``train`` by default, options after "?", e.g. "emoji:train?hold_out=scene_val") whose
    images ``model`` embeds; "captions:DATASET[:SPLIT]", its classes' captions (one per class), or a .txt file (one
    text per line, blank lines skipped), embedded by the model's text side: a bank of texts, for the hubness of text
    queries (needs a text-aligned model)."""
    if isinstance(references, (str, Path)):
        path = Path(references)
        if path.suffix == ".txt":
            if not path.is_file():
                raise FileNotFoundError(f"references {path} not found (a text file, one text per line)")
            texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            if not texts:
                raise ValueError(f"references {path} holds no text (one text per line expected)")
            references = model.encode_text(texts).numpy()
        elif path.suffix in (".npz", ".npy"):
            if not path.is_file():
                raise FileNotFoundError(f"references {path} not found (an .npz from `metricvision embed`, or an .npy)")
            loaded = np.load(path)
            references = loaded["embeddings"] if path.suffix == ".npz" else loaded
        elif str(references).startswith(CAPTIONS):
            from metricvision.kb.align import class_captions

            _, captions = class_captions(dataset_split(str(references)[len(CAPTIONS):]))
            references = model.encode_text(captions).numpy()
        else:
            references = model.encode_images([s.image for s in dataset_split(str(references))]).numpy()
    x = torch.as_tensor(np.asarray(references, np.float32))
    if x.ndim != 2 or x.shape[1] != model.dim or len(x) == 0:
        raise ValueError(f"references must be (N >= 1, {model.dim}) embeddings in the model's space, got shape {tuple(x.shape)}")
    return torch.nn.functional.normalize(x, dim=1)
