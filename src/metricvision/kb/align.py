"""Aligning an image encoder to a text space, and measuring text-to-image search.

The Embedder's linear head, and optionally the backbone's last blocks and the (MiniLM)
text encoder's last layers, are trained so that an image's embedding scores its own
class's text above the other classes' texts: an image-text contrastive loss (``clip``,
symmetric InfoNCE with a learned temperature, by default) whose references are the text
embeddings of the training classes, each class drawn per step among its caption, caption +
subcategory, short names and a prompt. Tuned text layers ship with the image checkpoint
(``kb.model.TEXT_PREFIX``). Since the head is linear it applies at every location too, so
dense features live in the text space (heat maps for text queries).
"""
from __future__ import annotations

from math import comb
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from metricvision.data import Sample
from metricvision.index import FlatIndex
from metricvision.kb.model import ImageTextModel, ModelCard, pooling_name
from metricvision.kb.text_tower import TunedTextTop
from metricvision.losses import create_loss
from metricvision.metrics.retrieval import hits_from_labels, recall_at_k
from metricvision.models import Embedder
from metricvision.models.text import MiniLMTextEncoder, TextEncoder
from metricvision.similarity import gallery_csls


def class_captions(samples: Sequence[Sample]) -> Tuple[np.ndarray, List[str]]:
    """(C,) distinct labels in order of appearance and the caption of each."""
    seen: Dict[int, str] = {}
    for s in samples:
        seen.setdefault(int(s.label), s.caption)
    if not all(seen.values()):
        missing = next(label for label, caption in seen.items() if not caption)
        raise ValueError(f"every class needs a caption; label {missing} has none")
    return np.array(list(seen), dtype=np.int64), list(seen.values())


def caption_variants(sample: Sample) -> List[str]:
    """Training texts of a sample's class: its caption, plus (emoji metadata) the caption with its
    subcategory, the short names, and the caption in a prompt; duplicates and empty ones dropped."""
    texts = [sample.caption]
    meta = sample.meta or {}
    if meta.get("subcategory"):
        texts.append(f"{sample.caption}, {str(meta['subcategory']).replace('-', ' ')}")
    if meta.get("short_names"):
        texts.append(" ".join(meta["short_names"]).replace("_", " "))
    texts.append(f"an emoji of {sample.caption}")
    return list(dict.fromkeys(t for t in texts if t.strip()))


def split_backbone(embedder: Embedder, tune_blocks: int) -> Tuple[nn.Module, nn.Module]:
    """(frozen trunk, tuned top): the backbone's last ``tune_blocks`` children form the top."""
    if tune_blocks == 0:
        return embedder.backbone, nn.Sequential()
    if embedder.taps:
        raise ValueError(f"tune_blocks needs an embedder without taps, got taps {list(embedder.taps)} and tune_blocks {tune_blocks}")
    if not isinstance(embedder.backbone, nn.Sequential) or not 0 < tune_blocks <= len(embedder.backbone):
        n = len(embedder.backbone) if isinstance(embedder.backbone, nn.Sequential) else 0
        raise ValueError(f"tune_blocks must be in [0, {n}] for backbone {embedder.backbone_name}, got {tune_blocks}")
    cut = len(embedder.backbone) - tune_blocks
    return embedder.backbone[:cut], embedder.backbone[cut:]


@torch.no_grad()
def trunk_features(embedder: Embedder, trunk: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, 3, H, W) -> (N, C, h, w) outputs of the frozen trunk, eval mode; when nothing is tuned (``trunk`` is the
    whole backbone) the Embedder's feature maps, its hypercolumn included."""
    embedder.eval()
    whole = trunk is embedder.backbone
    out = []
    for b in tqdm(images.split(batch_size), desc="backbone features", unit="batch", leave=False):
        out.append(embedder.features(b) if whole else trunk(embedder.backbone_input(b)))
    return torch.cat(out)


def train_alignment(
    samples: Sequence[Sample],
    text: TextEncoder,
    backbone: str = "mobilenet_v2",
    image_size: int = 128,
    epochs: int = 40,
    loss: str = "clip",
    lr: float = 3e-3,
    batch_size: int = 256,
    seed: int = 0,
    tune_blocks: int = 0,
    backbone_lr: float = 1e-4,
    extra_texts: bool = True,
    text_layers: int = 0,
    text_lr: float = 1e-4,
    init_run: Optional[str] = None,
    taps: Sequence[int] = (),
) -> Tuple[ImageTextModel, List[Dict[str, float]]]:
    """Align a pretrained Embedder (head, and optionally its last blocks) to the text space of ``text``.

    The trunk's outputs are computed once; each step runs the tuned blocks (batch norm
    statistics frozen), pooling and head on a batch, and scores it against the text
    embeddings of every training class (one of ``caption_variants`` per class, drawn
    per step when ``extra_texts``) with an image-text contrastive loss. With ``text_layers``
    the texts' token states below the tuned layers are computed once too; each step runs the
    tuned layers on the texts of the batch's classes, the other classes keeping their
    embeddings from the epoch's start.

    Args:
        samples: training samples (label = class, caption = its text).
        text: the text encoder (its dim becomes the embedding dim; frozen unless ``text_layers``).
        backbone: a backbone with pretrained weights available offline.
        image_size: side images are resized to.
        epochs, lr, batch_size, seed: optimisation (AdamW, one-cycle schedule).
        loss: a registered loss that accepts ``ref_embeddings`` ("clip": symmetric InfoNCE with a
            learned temperature; "infonce", "multi_similarity", ...).
        tune_blocks: last children of an ``nn.Sequential`` backbone trained too (0: head only).
        backbone_lr: learning rate of those blocks.
        extra_texts: also use the subcategory, short names and a prompt (``caption_variants``).
        text_layers: last transformer layers of the (MiniLM) text encoder tuned too (0: text frozen).
        text_lr: their learning rate.
        init_run: a `metricvision train` run folder whose trained backbone and pooling (same backbone name)
            replace the pretrained ones: an image representation metric-learned on the same training split.
        taps: backbone layers whose outputs join the last map (the Embedder's hypercolumn; not with tune_blocks).

    Returns:
        the aligned model (card with text_model set; its text encoder carries the tuned weights) and per-epoch logs.
    """
    torch.manual_seed(seed)
    embedder = _initial_embedder(backbone, text.dim, init_run, taps)
    card = ModelCard(backbone=backbone, pooling=pooling_name(embedder), dim=text.dim, head=True, image_size=image_size,
                     pretrained=True, text_model=text.name, taps=list(embedder.taps))
    model = ImageTextModel(card, embedder)
    trunk, top = split_backbone(embedder, tune_blocks)
    classes, _ = class_captions(samples)
    first = {int(s.label): s for s in reversed(samples)}
    variants = [caption_variants(first[int(c)]) if extra_texts else [first[int(c)].caption] for c in classes]
    texts = [t for v in variants for t in v]
    text_top = _text_top(text, text_layers, texts)
    flat = text.encode_text(texts) if text_top is None else torch.empty(0)
    owner = torch.tensor([i for i, v in enumerate(variants) for _ in v])
    ref_labels = torch.arange(len(classes))
    label_to_ref = {int(c): i for i, c in enumerate(classes)}
    labels = torch.tensor([label_to_ref[int(s.label)] for s in samples])
    feats = trunk_features(embedder, trunk, model.to_tensor([s.image for s in samples]))
    criterion = create_loss(loss)
    text_params = list(text_top.parameters()) if text_top is not None else []
    opt = torch.optim.AdamW([{"params": list(embedder.head.parameters()) + list(criterion.parameters()), "lr": lr},
                             {"params": list(top.parameters()), "lr": backbone_lr},
                             {"params": text_params, "lr": text_lr}], weight_decay=1e-4)
    steps = max(epochs * -(-len(feats) // batch_size), 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, [lr, backbone_lr, text_lr], total_steps=steps, pct_start=0.1)
    logs = []
    embedder.head.train()
    bar = tqdm(range(epochs), desc="aligning", unit="epoch", leave=False)
    for epoch in bar:
        order, total = torch.randperm(len(feats)), 0.0
        if text_top is not None:  # tuned text: the other classes' texts as of the epoch's start
            with torch.no_grad():
                bank = text_top(_pick_variants(owner, len(classes)))
        for s in range(0, len(feats), batch_size):
            b = order[s : s + batch_size]
            pick = _pick_variants(owner, len(classes))
            z = F.normalize(embedder.embed_features(top(feats[b])), dim=1)
            if text_top is None:
                refs = flat[pick]
            else:  # the batch's classes through the tuned layers (with gradients), the rest from the epoch's start
                present = labels[b].unique()
                refs = bank.index_copy(0, present, text_top(pick[present]))
            out = criterion(z, labels[b], ref_embeddings=refs, ref_labels=ref_labels)
            opt.zero_grad()
            out.value.backward()
            opt.step()
            sched.step()
            total += float(out.value.detach()) * len(b)
        logs.append({"epoch": epoch, "loss": total / max(len(feats), 1)})
        bar.set_postfix(loss=f"{logs[-1]['loss']:.4f}")
    embedder.eval()
    if text_top is not None:
        model = ImageTextModel(card, embedder, text=text.tuned(text_top.tuned_state()))
    return model, logs


def _initial_embedder(backbone: str, dim: int, init_run: Optional[str], taps: Sequence[int] = ()) -> Embedder:
    """The pretrained ``backbone`` with average pooling and a new (dim) head, or the backbone and pooling of a run."""
    if init_run is None:
        return Embedder(backbone, pooling="avg", dim=dim, pretrained=True, taps=taps)
    from metricvision.engine.runs import load_run

    recipe, trained = load_run(init_run)
    if trained.backbone_name != backbone:
        raise ValueError(f"init_run {init_run} has backbone '{trained.backbone_name}', expected '{backbone}'")
    embedder = Embedder(backbone, pooling=recipe.model.pooling, dim=dim, pretrained=False, taps=taps)
    embedder.backbone.load_state_dict(trained.backbone.state_dict())
    embedder.pool.load_state_dict(trained.pool.state_dict())
    return embedder


def _text_top(text: TextEncoder, layers: int, texts: Sequence[str]) -> Optional[TunedTextTop]:
    """Trainable last ``layers`` of the text encoder over ``texts``; None when nothing is tuned."""
    if layers == 0:
        return None
    if not isinstance(text, MiniLMTextEncoder):
        raise ValueError(f"tuning text layers needs the 'minilm' text model, not '{text.name}'")
    return TunedTextTop(text, layers, texts)


def _pick_variants(owner: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C,) one random row of ``owner`` (variant -> class) per class."""
    keys = torch.rand(len(owner)) + owner.to(torch.float32)
    order = keys.argsort()  # rows grouped by class, random within a class
    first = torch.ones(len(owner), dtype=torch.bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    picked = order[first]
    if len(picked) != num_classes:
        raise ValueError(f"every class needs a text; {num_classes - len(picked)} have none")
    return picked


def chance_recall(num_relevant: np.ndarray, gallery_size: int, k: int) -> float:
    """Expected Recall@k of a random ranking: mean of 1 - C(N - n, k) / C(N, k) over queries."""
    n = np.asarray(num_relevant)
    return float(np.mean([1.0 - comb(gallery_size - int(r), k) / comb(gallery_size, k) for r in n]))


def text_to_image_recall(
    model: ImageTextModel, samples: Sequence[Sample], ks: Sequence[int] = (1, 5, 10),
    references: Optional[torch.Tensor] = None, hub_k: int = 10,
) -> Dict[str, float]:
    """Recall@k of each class's caption retrieving an image of that class, with chance levels.

    With ``references`` ((R, D) normalized texts, e.g. the training classes' captions), images are ranked by a
    simplified CSLS on the gallery side (Conneau et al., ICLR 2018, take an image's neighbourhood among the queries;
    here among the references): 2 cos - r, r = the image's mean cosine to its ``hub_k`` nearest references, so an
    image close to many texts (a hub) loses what it gains everywhere.

    Returns:
        recall@k and chance@k for each k, plus the number of queries and gallery images.
    """
    classes, captions = class_captions(samples)
    gallery = model.encode_images([s.image for s in samples])
    labels = np.array([s.label for s in samples], dtype=np.int64)
    queries = model.encode_text(captions)
    if references is None:
        index = FlatIndex(model.dim, "ip")
        index.add(gallery)
        _, nn_ids = index.search(queries, max(ks))
    else:
        nn_ids = gallery_csls(queries, gallery, references, hub_k).topk(min(max(ks), len(samples)), dim=1).indices.numpy()
    hits = hits_from_labels(np.where(nn_ids >= 0, labels[nn_ids], -1), classes)
    out = recall_at_k(hits, ks)
    counts = np.array([(labels == c).sum() for c in classes])
    out.update({f"chance@{k}": chance_recall(counts, len(samples), k) for k in ks})
    out.update({"queries": float(len(classes)), "gallery": float(len(samples))})
    return out
