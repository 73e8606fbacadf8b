"""Aligning an image encoder to a frozen text space, and measuring text-to-image search.

The backbone is frozen (pretrained); the linear head of the Embedder is trained so that
an image's embedding scores its own caption above the other classes' captions: an
image-text contrastive loss (``infonce`` by default) whose references are the text
embeddings of the training classes. Since the head is linear it applies at every
location too, so dense features live in the text space (heat maps for text queries).
"""
from __future__ import annotations

from math import comb
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from metricvision.data import Sample
from metricvision.index import FlatIndex
from metricvision.kb.model import ImageTextModel, ModelCard
from metricvision.losses import create_loss
from metricvision.metrics.retrieval import hits_from_labels, recall_at_k
from metricvision.models import Embedder
from metricvision.models.text import TextEncoder


def class_captions(samples: Sequence[Sample]) -> Tuple[np.ndarray, List[str]]:
    """(C,) distinct labels in order of appearance and the caption of each."""
    seen: Dict[int, str] = {}
    for s in samples:
        seen.setdefault(int(s.label), s.caption)
    if not all(seen.values()):
        missing = next(label for label, caption in seen.items() if not caption)
        raise ValueError(f"every class needs a caption; label {missing} has none")
    return np.array(list(seen), dtype=np.int64), list(seen.values())


@torch.no_grad()
def pooled_features(embedder: Embedder, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, 3, H, W) -> (N, C) pooled backbone features (before the head), eval mode."""
    embedder.eval()
    batches = tqdm(images.split(batch_size), desc="backbone features", unit="batch", leave=False)
    return torch.cat([embedder.pool(embedder.features(b)) for b in batches])


def train_alignment(
    samples: Sequence[Sample],
    text: TextEncoder,
    backbone: str = "mobilenet_v2",
    image_size: int = 64,
    epochs: int = 40,
    loss: str = "infonce",
    lr: float = 3e-3,
    batch_size: int = 256,
    seed: int = 0,
) -> Tuple[ImageTextModel, List[Dict[str, float]]]:
    """Train the head of a pretrained Embedder into the text space of ``text``.

    Args:
        samples: training samples (label = class, caption = its text).
        text: the frozen text encoder (its dim becomes the embedding dim).
        backbone: a backbone with pretrained weights available offline.
        image_size: side images are resized to.
        epochs, lr, batch_size, seed: optimisation (AdamW on the head only).
        loss: a registered loss that accepts ``ref_embeddings`` (infonce, clip, multi_similarity, ...).

    Returns:
        the aligned model (card with text_model set) and per-epoch logs.
    """
    torch.manual_seed(seed)
    embedder = Embedder(backbone, pooling="avg", dim=text.dim, pretrained=True)
    card = ModelCard(backbone=backbone, pooling="avg", dim=text.dim, head=True, image_size=image_size,
                     pretrained=True, text_model=text.name)
    model = ImageTextModel(card, embedder)
    classes, captions = class_captions(samples)
    refs = text.encode_text(captions)
    ref_labels = torch.arange(len(classes))
    label_to_ref = {int(c): i for i, c in enumerate(classes)}
    labels = torch.tensor([label_to_ref[int(s.label)] for s in samples])
    feats = pooled_features(embedder, model.to_tensor([s.image for s in samples]))
    criterion = create_loss(loss)
    head = embedder.head
    params = list(head.parameters()) + list(criterion.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    logs = []
    head.train()
    bar = tqdm(range(epochs), desc="aligning the head", unit="epoch", leave=False)
    for epoch in bar:
        order, total = torch.randperm(len(feats)), 0.0
        for s in range(0, len(feats), batch_size):
            b = order[s : s + batch_size]
            out = criterion(F.normalize(head(feats[b]), dim=1), labels[b], ref_embeddings=refs, ref_labels=ref_labels)
            opt.zero_grad()
            out.value.backward()
            opt.step()
            total += float(out.value.detach()) * len(b)
        sched.step()
        logs.append({"epoch": epoch, "loss": total / max(len(feats), 1)})
        bar.set_postfix(loss=f"{logs[-1]['loss']:.4f}")
    embedder.eval()
    return model, logs


def chance_recall(num_relevant: np.ndarray, gallery_size: int, k: int) -> float:
    """Expected Recall@k of a random ranking: mean of 1 - C(N - n, k) / C(N, k) over queries."""
    n = np.asarray(num_relevant)
    return float(np.mean([1.0 - comb(gallery_size - int(r), k) / comb(gallery_size, k) for r in n]))


def text_to_image_recall(
    model: ImageTextModel, samples: Sequence[Sample], ks: Sequence[int] = (1, 5, 10)
) -> Dict[str, float]:
    """Recall@k of each class's caption retrieving an image of that class, with chance levels.

    Returns:
        recall@k and chance@k for each k, plus the number of queries and gallery images.
    """
    classes, captions = class_captions(samples)
    gallery = model.encode_images([s.image for s in samples])
    labels = np.array([s.label for s in samples], dtype=np.int64)
    index = FlatIndex(model.dim, "ip")
    index.add(gallery)
    _, nn_ids = index.search(model.encode_text(captions), max(ks))
    hits = hits_from_labels(np.where(nn_ids >= 0, labels[nn_ids], -1), classes)
    out = recall_at_k(hits, ks)
    counts = np.array([(labels == c).sum() for c in classes])
    out.update({f"chance@{k}": chance_recall(counts, len(samples), k) for k in ks})
    out.update({"queries": float(len(classes)), "gallery": float(len(samples))})
    return out
