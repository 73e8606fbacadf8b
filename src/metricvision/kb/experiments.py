"""The emoji experiments behind `metricvision kb align`: text-to-image search and composed queries.

Composed task (skin-tone change): the query is an emoji in its default (yellow) tone plus
the text of a skin tone ("medium-dark skin tone"); the target is the same emoji, same
vendor, in that tone. Identities of the test split are never seen in training.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from metricvision.data import Sample
from metricvision.kb.align import class_captions, text_to_image_recall, train_alignment
from metricvision.kb.compose import Combiner, train_combiner, weighted_sum
from metricvision.kb.model import ImageTextModel, save_image_model
from metricvision.metrics.retrieval import hits_from_labels, recall_at_k
from metricvision.models.text import create_text_encoder

if TYPE_CHECKING:
    from metricvision.kb.store import KnowledgeBase

TONE_NAMES = {"1F3FB": "light skin tone", "1F3FC": "medium-light skin tone", "1F3FD": "medium skin tone",
              "1F3FE": "medium-dark skin tone", "1F3FF": "dark skin tone"}
CSLS_K = 10  # neighbours of an image among the training names (the paper's default)


def tone_triplets(samples: Sequence[Sample]) -> Tuple[np.ndarray, List[str], np.ndarray]:
    """(query index, modifier text, target index) for every default-tone emoji with single-tone variants."""
    default: Dict[Tuple[int, str], int] = {}
    for i, s in enumerate(samples):
        if s.meta.get("tone", "") == "":
            default[(s.label, s.meta.get("vendor", ""))] = i
    q, texts, t = [], [], []
    for i, s in enumerate(samples):
        key = (s.label, s.meta.get("vendor", ""))
        if s.meta.get("tone") in TONE_NAMES and key in default:
            q.append(default[key])
            texts.append(TONE_NAMES[s.meta["tone"]])
            t.append(i)
    return np.array(q, dtype=np.int64), texts, np.array(t, dtype=np.int64)


def kb_text_recall(kb: "KnowledgeBase", samples: Sequence[Sample], ks: Sequence[int] = (1, 5, 10),
                   hub_correction: bool = True) -> Dict[str, float]:
    """Recall@k of each class's caption over ``kb``'s own search (``metricvision.kb.query.search``, the path of
    `metricvision search --text` and ``POST /v1/search``), with or without its hubness correction."""
    from metricvision.kb.query import search

    classes, captions = class_captions(samples)
    labels = np.full((len(captions), max(ks)), -1, dtype=np.int64)
    for row, caption in zip(labels, captions):
        found = [h["label"] for h in search(kb, text=caption, k=max(ks), hub_correction=hub_correction)]
        row[:len(found)] = found
    return recall_at_k(hits_from_labels(labels, classes), ks)


def composed_recall(
    gallery: torch.Tensor, text_emb: torch.Tensor, query_idx: np.ndarray, target_idx: np.ndarray,
    combiner: Optional[Combiner] = None, ks: Sequence[int] = (1, 5, 10),
) -> Dict[str, Dict[str, float]]:
    """Recall@k of the exact target item for image-only, text-only, weighted-sum (and combiner) queries.

    The reference image itself is left out of its query's ranking (as in CIRR).

    Args:
        gallery: (N, D) item embeddings.
        text_emb: (T, D) modifier embeddings, one per triplet.
        query_idx: (T,) reference-image rows of the gallery.
        target_idx: (T,) target rows.
        combiner: a trained combiner, evaluated when given.
    """
    img = gallery[query_idx]
    with torch.no_grad():
        queries = {"image only": img, "text only": text_emb, "weighted sum 0.5": weighted_sum(img, text_emb, 0.5)}
        if combiner is not None:
            queries["trained combiner"] = combiner(img, text_emb)
    out = {}
    for name, q in queries.items():
        scores = q @ gallery.T
        scores[torch.arange(len(q)), torch.from_numpy(query_idx)] = -float("inf")
        top = scores.topk(max(ks), dim=1).indices.numpy()
        out[name] = recall_at_k(top == target_idx[:, None], ks)
    return out


def run_alignment(
    out_dir: str | Path, text_model: str = "minilm", epochs: int = 40, dataset_path: Optional[str] = None,
    build_kb: bool = False, seed: int = 0, image_size: int = 128, tune_blocks: int = 0, backbone_lr: float = 1e-4,
    loss: str = "clip", extra_texts: bool = True, text_layers: int = 2, text_lr: float = 1e-4,
    init_run: Optional[str] = None, taps: Sequence[int] = (), hold_out: str = "",
) -> Dict[str, Any]:
    """Align on the emoji train split, evaluate on the test split, train the combiner; write everything to out_dir.

    image_size, tune_blocks, backbone_lr, loss, extra_texts, text_layers, text_lr, init_run, taps: as in ``train_alignment``;
    tuned text layers are written into the checkpoint and embed every text (queries, tone modifiers);
    hold_out: as the emoji dataset's option ("scene_val": leave the scene benchmark's validation identities out).
    Text-to-image recall is reported plain and (``text_to_image_csls``) with the gallery-side CSLS against the
    training classes' names (``text_to_image_recall``'s ``references``).
    Writes image_model.safetensors, combiner.safetensors, metrics.json (and kb/ with ``build_kb``).
    """
    from metricvision.data.emoji import emoji_splits

    splits = emoji_splits(dataset_path, hold_out=hold_out)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, test = splits["train"], splits["test"]
    start = time.time()
    text = create_text_encoder(text_model)
    align = {"image_size": image_size, "tune_blocks": tune_blocks, "backbone_lr": backbone_lr, "loss": loss,
             "extra_texts": extra_texts, "text_layers": text_layers, "text_lr": text_lr, "init_run": init_run,
             "taps": list(taps)}
    model, logs = train_alignment(train, text, epochs=epochs, seed=seed, **align)
    text = model.text
    card = save_image_model(model.embedder, out / "image_model.safetensors", model.card.image_size, text.name,
                            text_state=getattr(text, "tuned_state", None))
    model = ImageTextModel(card, model.embedder)
    align_seconds = time.time() - start
    metrics: Dict[str, Any] = {"text_to_image": text_to_image_recall(model, test), "align_seconds": align_seconds,
                               "final_loss": logs[-1]["loss"] if logs else None, "align_settings": align}
    names = model.encode_text(class_captions(train)[1])  # the training classes' names: a bank for CSLS
    metrics["text_to_image_csls"] = text_to_image_recall(model, test, references=names, hub_k=CSLS_K)

    embedded = {name: model.encode_images([s.image for s in part]) for name, part in (("train", train), ("test", test))}
    tq, ttexts, tt = tone_triplets(train)
    combiner, _ = train_combiner(embedded["train"][tq], text.encode_text(ttexts), torch.from_numpy(tt),
                                 embedded["train"], torch.arange(len(train)), seed=seed)
    combiner.save(out / "combiner.safetensors")
    q, texts, t = tone_triplets(test)
    metrics["composed_tone"] = composed_recall(embedded["test"], text.encode_text(texts), q, t, combiner)
    metrics["composed_tone"]["triplets"] = {"train": len(tq), "test": len(q)}
    metrics["total_seconds"] = time.time() - start
    if build_kb:  # with the training names as its text bank: its text search ranks as text_to_image_csls does
        from metricvision.kb.store import KnowledgeBase

        kb = KnowledgeBase.create(out / "kb", model, text_bank=names, text_bank_k=CSLS_K,
                                  text_bank_source="the training classes' names")
        kb.add_embedded(test, embedded["test"].numpy())
        shutil.copyfile(out / "combiner.safetensors", out / "kb" / "combiner.safetensors")
        metrics["kb"] = str(out / "kb")
        metrics["kb_text_to_image"] = {"plain": kb_text_recall(kb, test, hub_correction=False),
                                       "hub_corrected": kb_text_recall(kb, test)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
