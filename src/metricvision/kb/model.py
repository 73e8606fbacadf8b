"""The model behind a knowledge base: an image Embedder, an optional text encoder, and its card.

A checkpoint written by ``save_image_model`` is a safetensors file whose metadata holds
the card (backbone, pooling, dim, image size, text model), so a KB can rebuild the exact
model that made its embeddings.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from metricvision._atomic import atomic_write
from metricvision.data import load_image
from metricvision.models import Embedder
from metricvision.models.ensemble import EnsembleEmbedder, EnsembleText
from metricvision.models.text import TextEncoder, create_text_encoder

CARD_KEY = "metricvision_card"
TEXT_PREFIX = "text."


@dataclass
class ModelCard:
    """What made a KB's embeddings.

    Attributes:
        backbone: Embedder backbone name.
        pooling: Embedder pooling.
        dim: embedding size D (0 = the backbone's channels; resolved when the model is built).
        head: whether a linear head maps backbone channels to D (False: D = channels).
        image_size: side images are resized to before encoding.
        pretrained: whether the backbone started from pretrained weights.
        checkpoint: path of the weights file, None for the plain (pretrained) backbone.
        checkpoint_sha256: hash of that file.
        text_model: text encoder whose space the image embeddings live in, None when not aligned.
        text_tuned: the checkpoint also holds tuned weights of the text model (keys ``TEXT_PREFIX`` + its
            own names), which then embeds the text queries.
        taps: backbone layers whose outputs join the last map (the Embedder's hypercolumn; empty: none).
        members: 1 for one Embedder; M > 1 for an ``EnsembleEmbedder`` of M Embedders of this architecture, each
            of dim D / M (``ensemble_checkpoints``).
        member_sizes: for an ensemble of members trained at different image sizes, each one's side (``image_size``
            is then the largest, to which inputs are resized first); empty when they share ``image_size``.
    """

    backbone: str = "mobilenet_v2"
    pooling: str = "avg"
    dim: int = 0
    head: bool = False
    image_size: int = 64
    pretrained: bool = True
    checkpoint: Optional[str] = None
    checkpoint_sha256: Optional[str] = None
    text_model: Optional[str] = None
    text_tuned: bool = False
    taps: List[int] = field(default_factory=list)
    members: int = 1
    member_sizes: List[int] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelCard":
        """Card from a dict; unknown keys are refused by name."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown model card keys {unknown}; expected some of {sorted(names)}")
        return cls(**d)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ImageTextModel:
    """An image Embedder plus (lazily loaded) text encoder, described by a ModelCard.

    Args:
        card: the model card; when ``card.checkpoint`` is set its weights are loaded.
        embedder: an already built Embedder (skips building from the card).
        text: an already built text encoder of the card's text model (skips loading it).
    """

    def __init__(self, card: ModelCard, embedder: Optional[Embedder] = None, text: Optional[TextEncoder] = None) -> None:
        if embedder is None:
            if not card.pretrained and not card.checkpoint:
                raise ValueError(f"backbone '{card.backbone}' without pretrained weights needs a checkpoint; "
                                 "a random initialisation cannot be rebuilt")
            if card.members < 1 or (card.head and card.dim % card.members):
                raise ValueError(f"members must be >= 1 and divide dim, got members {card.members}, dim {card.dim}")
            dim = card.dim // card.members if card.head else 0

            def member() -> Embedder:
                return Embedder(card.backbone, card.pooling, dim, pretrained=card.pretrained and not card.checkpoint,
                                taps=card.taps)
            embedder = member() if card.members == 1 else EnsembleEmbedder([member() for _ in range(card.members)],
                                                                           sizes=card.member_sizes or None)
            if card.checkpoint:
                from safetensors.torch import load_file

                state = load_file(card.checkpoint)
                embedder.load_state_dict({k: v for k, v in state.items() if not k.startswith(TEXT_PREFIX)})
        self.embedder = embedder.eval()
        self.card = card
        self.card.dim, self.card.head = embedder.dim, isinstance(embedder.head, torch.nn.Linear)
        self._text: Optional[TextEncoder] = text
        # fast tokenizers refuse concurrent calls ("Already borrowed"): text encoding is serialized,
        # image encoding (the Embedder stays in eval mode) runs in parallel
        self._text_lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> "ImageTextModel":
        """Model from a checkpoint written by ``save_image_model``."""
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {path} not found")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if CARD_KEY not in meta:
            raise ValueError(f"{path} has no '{CARD_KEY}' metadata; write it with metricvision.kb.save_image_model")
        card = ModelCard.from_dict(json.loads(meta[CARD_KEY]))
        card.checkpoint, card.checkpoint_sha256 = str(path.resolve()), file_sha256(path)
        return cls(card)

    @property
    def dim(self) -> int:
        """Embedding size D."""
        return self.card.dim

    @property
    def text(self) -> TextEncoder:
        """The text encoder; refuses when the image embeddings are not in a text space."""
        if self.card.text_model is None:
            raise ValueError(
                "this model's image embeddings are not aligned to a text model, so text queries are impossible; "
                "build the KB with --checkpoint from `metricvision kb align`"
            )
        if self._text is None:
            text = create_text_encoder(self.card.text_model)
            if self.card.members > 1:  # each member's own tuned text layers (text.<i>.*), or the shared model
                prefixes = [f"{TEXT_PREFIX}{i}." for i in range(self.card.members)]
                text = EnsembleText([_tuned_text(text, self.card, p) if self.card.text_tuned else text for p in prefixes])
            elif self.card.text_tuned:
                text = _tuned_text(text, self.card)
            if text.dim != self.dim:
                raise ValueError(f"text model '{self.card.text_model}' has dim {text.dim}, images have {self.dim}")
            self._text = text
        return self._text

    def to_tensor(self, images: Sequence[Any], size: Optional[int] = None) -> torch.Tensor:
        """Paths / arrays / PIL images -> (N, 3, size, size) floats in [0, 1] (size: the card's)."""
        size = size or self.card.image_size
        arrays = [np.asarray(load_image(im).resize((size, size)), dtype=np.float32) / 255.0 for im in images]
        if not arrays:
            return torch.empty(0, 3, size, size)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def encode_images(self, images: Sequence[Any], batch_size: int = 128) -> torch.Tensor:
        """(N,) images -> (N, D) normalized embeddings."""
        from tqdm import tqdm

        out = [torch.empty(0, self.dim)]
        starts = range(0, len(images), batch_size)
        for s in tqdm(starts, desc="embedding images", unit="batch", leave=False, disable=len(starts) < 2):
            out.append(self.embedder.encode(self.to_tensor(images[s : s + batch_size])))
        return torch.cat(out)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(N,) strings -> (N, D) normalized embeddings in the images' space."""
        with self._text_lock:
            return self.text.encode_text(texts)

    def encode_dense(self, image: Any, max_side: int = 512) -> torch.Tensor:
        """One image -> (D, h, w) normalized features.

        The image keeps its resolution, except that its longest side is brought into
        [4 * image_size, max_side] so that small images still give a map of several cells.
        """
        im = load_image(image)
        longest = max(im.size)
        scale = min(max(longest, 4 * self.card.image_size), max_side) / longest
        w, h = max(8, round(im.width * scale)), max(8, round(im.height * scale))
        x = torch.from_numpy(np.asarray(im.resize((w, h)), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        return self.embedder.encode_dense(x)[0]


def save_image_model(embedder: Embedder | EnsembleEmbedder, path: str | os.PathLike, image_size: int,
                     text_model: Optional[str] = None, pretrained: bool = True,
                     text_state: Optional[Dict[str, torch.Tensor]] = None) -> ModelCard:
    """Write the Embedder's weights with its card in the safetensors metadata (temp name, then rename).

    ``text_state``: tuned weights of the text model (named as in it; for an ensemble, "<member>." + that name),
    stored under ``TEXT_PREFIX``.
    """
    from safetensors.torch import save

    if text_state and text_model is None:
        raise ValueError("tuned text weights need the name of their text model")
    members = len(embedder.members) if isinstance(embedder, EnsembleEmbedder) else 1
    sizes = list(getattr(embedder, "sizes", None) or [])
    if sizes and image_size != max(sizes):
        raise ValueError(f"a mixed-size ensemble's image_size must be its largest member size {max(sizes)}, got {image_size}")
    card = ModelCard(backbone=embedder.backbone_name, pooling=pooling_name(embedder), dim=embedder.dim,
                     head=isinstance(embedder.head, torch.nn.Linear), image_size=image_size, pretrained=pretrained,
                     text_model=text_model, text_tuned=bool(text_state), taps=list(embedder.taps), members=members,
                     member_sizes=sizes)
    path = Path(path)
    state = {k: v.contiguous() for k, v in embedder.state_dict().items()}
    state.update({TEXT_PREFIX + k: v.contiguous() for k, v in (text_state or {}).items()})
    with atomic_write(path) as f:
        f.write(save(state, metadata={CARD_KEY: json.dumps(asdict(card))}))
    card.checkpoint, card.checkpoint_sha256 = str(path.resolve()), file_sha256(path)
    return card


def ensemble_checkpoints(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> ModelCard:
    """Write one checkpoint holding the image models of ``paths`` (``save_image_model`` files of one architecture) as
    an ``EnsembleEmbedder``: its cosine is the mean of theirs. Members trained at different image sizes each embed at
    their own (the card's ``image_size`` is the largest, ``member_sizes`` each one's). Members aligned to one text
    model keep their own tuned text layers, and the ensemble's text queries are the ``EnsembleText`` of them."""
    from safetensors.torch import load_file

    models = [ImageTextModel.from_checkpoint(p) for p in paths]
    first = models[0].card
    for p, m in zip(paths, models):
        if m.card.members != 1:
            raise ValueError(f"{p} is an ensemble already: ensemble single models")
        if (m.card.text_model, m.card.text_tuned) != (first.text_model, first.text_tuned):
            raise ValueError(f"{p} has text model {m.card.text_model!r} (tuned: {m.card.text_tuned}), {paths[0]} "
                             f"{first.text_model!r} (tuned: {first.text_tuned}): members share one text model")
    text_state = {f"{i}.{k[len(TEXT_PREFIX):]}": v for i, p in enumerate(paths) if first.text_tuned
                  for k, v in load_file(str(p)).items() if k.startswith(TEXT_PREFIX)}
    sizes = [m.card.image_size for m in models]
    ensemble = EnsembleEmbedder([m.embedder for m in models], sizes=sizes)
    return save_image_model(ensemble, out, max(sizes), text_model=first.text_model, pretrained=first.pretrained,
                            text_state=text_state or None)


def _tuned_text(text: TextEncoder, card: ModelCard, prefix: str = TEXT_PREFIX) -> TextEncoder:
    """The card's text encoder with the tuned weights stored in its checkpoint under ``prefix``."""
    from safetensors.torch import load_file

    if not card.checkpoint:
        raise ValueError("the card says the text model was tuned, but it names no checkpoint holding those weights")
    state = {k[len(prefix):]: v for k, v in load_file(card.checkpoint).items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{card.checkpoint} holds no tuned text weights ('{prefix}*'), though its card says so")
    if not hasattr(text, "tuned"):
        raise ValueError(f"text model '{card.text_model}' cannot load tuned weights")
    return text.tuned(state)


def pooling_name(embedder: Embedder) -> str:
    """The registered name of the Embedder's pooling."""
    from metricvision.models.pooling import POOLINGS

    for name in POOLINGS.names():
        if type(embedder.pool) is POOLINGS.get(name):
            return name
    raise ValueError(f"pooling {type(embedder.pool).__name__} is not registered")
