"""Random numbers exactly as one-element torch calls draw them from the default CPU generator.

A training transform draws ~15 numbers per image (``torch.rand(1)``, ``uniform_``, ``randint``,
``randperm``), each a torch call of a few microseconds: on 2 cores that is a sixth of the data
pipeline. ``replayed_draws`` copies the generator's MT19937 state into numpy once, hands out the same
numbers in the same order from blocks of raw 32-bit words, and writes the advanced state back, so
that torch's later draws are those they would have been. ``TORCH_DRAWS`` makes the torch calls
themselves (a single image, or a torch whose generator state layout is not the one read here).
"""
from __future__ import annotations

import contextlib
import functools
import struct
from typing import Dict, Iterator, List, Optional, Protocol, Tuple

import numpy as np
import torch

_U24 = 2.0 ** -24
# CPUGeneratorImpl state bytes: uint64 seed, int32 left, int32 seeded, uint64 next, uint64 state[624], ...
_LEFT, _NEXT, _KEY, _N = 8, 16, 24, 624


_F32 = struct.Struct("f")


def f32(x: float) -> float:
    """``x`` rounded to the nearest float32."""
    return _F32.unpack(_F32.pack(x))[0]


class Draws(Protocol):
    def rand(self) -> float:
        """``torch.rand(1).item()``."""

    def uniform(self, lo: float, hi: float) -> float:
        """``torch.empty(1).uniform_(lo, hi).item()``."""

    def randint(self, n: int) -> int:
        """``torch.randint(0, n, (1,)).item()``."""

    def randperm(self, n: int) -> List[int]:
        """``torch.randperm(n).tolist()``."""


class _TorchCalls:
    def rand(self) -> float:
        return torch.rand(1).item()

    def uniform(self, lo: float, hi: float) -> float:
        return torch.empty(1).uniform_(lo, hi).item()

    def randint(self, n: int) -> int:
        return int(torch.randint(0, n, (1,)).item())

    def randperm(self, n: int) -> List[int]:
        return torch.randperm(n).tolist()


TORCH_DRAWS: Draws = _TorchCalls()


class _Replay:
    """Draws from a numpy MT19937 holding the torch generator's state (the arithmetic of ATen's CPU kernels)."""

    def __init__(self, key: np.ndarray, pos: int, block: int = 512) -> None:
        self.start = {"bit_generator": "MT19937", "state": {"key": key, "pos": pos}}
        self.bits = np.random.MT19937(0)
        self.bits.state = self.start
        self.block, self.words, self.i, self.used = block, [], 0, 0
        self.ranges: Dict[Tuple[float, float], Tuple[float, float]] = {}

    def _word(self) -> int:
        if self.i == len(self.words):
            self.used += len(self.words)
            self.words, self.i = self.bits.random_raw(self.block).tolist(), 0
        self.i += 1
        return self.words[self.i - 1]

    def consumed(self) -> int:
        return self.used + self.i

    def rand(self) -> float:
        return (self._word() & 0xFFFFFF) * _U24

    def uniform(self, lo: float, hi: float) -> float:
        # float32 kernel: fma(u, to - from, from), exact in double for ranges of a few binades, rounded once
        r = self.ranges.get((lo, hi))
        if r is None:
            r = self.ranges[(lo, hi)] = (f32(f32(hi) - f32(lo)), f32(lo))
        return f32(self.rand() * r[0] + r[1])

    def randint(self, n: int) -> int:
        return self._word() % n

    def randperm(self, n: int) -> List[int]:
        # ATen's randperm_cpu: Fisher-Yates with random() % (n - i)
        p = list(range(n))
        for i in range(n - 1):
            z = self._word() % (n - i)
            p[i], p[i + z] = p[i + z], p[i]
        return p


def _read_state(state: torch.Tensor) -> Optional[tuple]:
    """(key (624,) uint32, numpy position) of the generator state bytes, or None for an unknown layout."""
    a = state.numpy()
    if a.size < _KEY + 8 * _N:
        return None
    left = int(a[_LEFT:_LEFT + 4].view("<i4")[0])
    nxt = int(a[_NEXT:_NEXT + 8].view("<u8")[0])
    if not (left == 1 or left + nxt == _N + 1):
        return None
    return a[_KEY:_KEY + 8 * _N].view("<u8").astype(np.uint32), (_N if left == 1 else nxt)


def _write_state(state: torch.Tensor, key: np.ndarray, pos: int) -> None:
    a = state.numpy()
    a[_KEY:_KEY + 8 * _N].view("<u8")[:] = key
    a[_LEFT:_LEFT + 4].view("<i4")[0] = _N + 1 - pos if pos < _N else 1
    a[_NEXT:_NEXT + 8].view("<u8")[0] = pos


@functools.lru_cache(maxsize=None)
def _replay_matches() -> bool:
    """Whether replayed draws equal torch's on this torch build (checked once, the generator left as it was)."""
    saved = torch.get_rng_state()
    try:
        torch.manual_seed(12345)
        torch.rand(700)  # past a regeneration of the state
        read = _read_state(torch.get_rng_state())
        if read is None:
            return False
        replay = _Replay(*read, block=7)
        mine = [replay.rand(), replay.uniform(-0.05, 0.05), replay.randint(37), *replay.randperm(4)]
        theirs = [TORCH_DRAWS.rand(), TORCH_DRAWS.uniform(-0.05, 0.05), TORCH_DRAWS.randint(37), *TORCH_DRAWS.randperm(4)]
        return mine == theirs
    finally:
        torch.set_rng_state(saved)


@contextlib.contextmanager
def replayed_draws() -> Iterator[Draws]:
    """Draws equal to torch's next ones; on exit the default CPU generator is advanced past all of them."""
    state = torch.get_rng_state()
    read = _read_state(state) if _replay_matches() else None
    if read is None:
        yield TORCH_DRAWS
        return
    replay = _Replay(*read)
    try:
        yield replay
    finally:
        bits = np.random.MT19937(0)
        bits.state = replay.start
        bits.random_raw(replay.consumed())
        _write_state(state, bits.state["state"]["key"], bits.state["state"]["pos"])
        torch.set_rng_state(state)
