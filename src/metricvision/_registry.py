"""A tiny registry: components are registered by name and built by one factory."""
from __future__ import annotations

from typing import Any, Callable, Dict, Generic, List, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to constructors (classes or functions).

    Example:
        >>> LOSSES = Registry("loss")
        >>> @LOSSES.register("triplet")
        ... class TripletLoss: ...
        >>> LOSSES.create("triplet", margin=0.2)
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: Dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a constructor under ``name``."""

        def wrap(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise KeyError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = fn
            return fn

        return wrap

    def get(self, name: str) -> Callable[..., T]:
        """Return the constructor registered as ``name``."""
        if name not in self._entries:
            raise KeyError(
                f"unknown {self.kind} '{name}'; expected one of: {', '.join(self.names())}"
            )
        return self._entries[name]

    def create(self, name: str, **overrides: Any) -> T:
        """Build ``name``; overrides that are None are dropped so unset flags pass through."""
        kwargs = {k: v for k, v in overrides.items() if v is not None}
        return self.get(name)(**kwargs)

    def names(self) -> List[str]:
        """Sorted registered names."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
