"""Tuning the last transformer layers of the MiniLM text tower during image-text alignment.

The layers below the tuned ones stay frozen, so their outputs (token states of every
training text) are computed once; each step runs only the tuned copies of the last
layers, mean-pools under the attention mask and normalizes, exactly as
``MiniLMTextEncoder.encode_text`` does. The tuned weights are named as in the
transformers model ("encoder.layer.5. ..."), so ``MiniLMTextEncoder.tuned`` can load them
(they ship in the image checkpoint under ``TEXT_PREFIX``).
"""
from __future__ import annotations

import copy
from typing import Dict, Sequence

import torch
from torch import nn

from metricvision.models.text import MiniLMTextEncoder, mean_pool


class TunedTextTop(nn.Module):
    """Trainable copies of the last ``layers`` layers of ``encoder`` over cached token states of ``texts``.

    Args:
        encoder: the frozen MiniLM encoder.
        layers: how many of its last transformer layers are tuned (>= 1).
        texts: the texts that ``forward`` embeds, by row.
        chunk: texts run through the layers at once.
    """

    def __init__(self, encoder: MiniLMTextEncoder, layers: int, texts: Sequence[str], chunk: int = 128) -> None:
        super().__init__()
        self.chunk = chunk
        stack = encoder.model.encoder.layer
        if not 0 < layers <= len(stack):
            raise ValueError(f"text layers to tune must be in [1, {len(stack)}], got {layers}")
        self.first = len(stack) - layers
        self.layers = copy.deepcopy(stack[self.first :]).train()
        for m in self.layers.modules():  # deterministic steps: dropout off
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        states, mask = encoder.token_states(texts, self.first)
        self.register_buffer("states", states, persistent=False)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """(B,) text rows -> (B, dim) normalized embeddings through the tuned layers.

        Rows run in chunks of similar length, each padded only to its own longest text.
        """
        order = self.mask[rows].sum(1).argsort()
        parts = [self._embed(rows[chunk]) for chunk in order.split(self.chunk)]
        return torch.cat(parts)[order.argsort()] if parts else torch.empty(0, self.states.shape[-1])

    def _embed(self, rows: torch.Tensor) -> torch.Tensor:
        mask = self.mask[rows]
        width = int(mask.sum(1).max())
        mask, x = mask[:, :width], self.states[rows, :width]
        additive = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, attention_mask=additive)
            x = x[0] if isinstance(x, tuple) else x
        return mean_pool(x, mask)

    def tuned_state(self) -> Dict[str, torch.Tensor]:
        """The tuned layers' weights, keyed as in the transformers model."""
        return {f"encoder.layer.{self.first + int(k.split('.', 1)[0])}.{k.split('.', 1)[1]}": v.detach().clone()
                for k, v in self.layers.state_dict().items()}
