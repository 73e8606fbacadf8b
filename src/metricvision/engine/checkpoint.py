"""Checkpoints in safetensors, written to a temporary name and renamed.

Tensors: model and loss weights, optimizer state; everything else (epoch, optimizer
hyper-parameters, scheduler state, history) goes in the JSON metadata of the same file.
The version a save replaces stays beside it as ``<name>.prev`` (a hard link, so no copy),
and a damaged checkpoint is refused with a message that points to it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from metricvision._atomic import atomic_write


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be read (truncated, empty, not safetensors)."""


def previous_version(path: str | os.PathLike) -> Path:
    """Where the version of ``path`` that the last save replaced is kept."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def _damaged(path: Path, reason: str) -> CheckpointError:
    prev = previous_version(path)
    lines = [f"checkpoint {path} is damaged ({reason}) and cannot be loaded."]
    try:
        epoch = read_info(prev).get("epoch", "?")
        lines.append(f"An earlier version (end of epoch {epoch}) is {prev}: `mv {prev} {path}`, then "
                     f"`metricvision train {path.parent / 'recipe.yaml'} --out {path.parent} --resume` continues from it.")
    except (FileNotFoundError, CheckpointError):
        lines.append(f"No earlier version is kept beside it: copy back a good one from a backup, or delete it and "
                     f"`metricvision train {path.parent / 'recipe.yaml'} --out {path.parent} --resume` retrains that run.")
    return CheckpointError("\n".join(lines))


def _read(path: Path, tensors: bool) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(tensors or {}, metricvision metadata) of ``path``; CheckpointError when it is damaged."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if path.stat().st_size == 0:
        raise _damaged(path, "empty file, 0 bytes")
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("metricvision", "{}"))
        return (load_file(str(path)) if tensors else {}), meta
    except (SafetensorError, json.JSONDecodeError) as e:
        raise _damaged(path, f"{path.stat().st_size} bytes, {e}") from None


def _flatten_optimizer(state: Dict[str, Any]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value.contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> Dict[str, Any]:
    state: Dict[int, Dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str | os.PathLike, modules: Dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None, info: Dict[str, Any]) -> None:
    """Write modules' state dicts, the optimizer and ``info`` (JSON-able) atomically to ``path``.

    The file it replaces is kept as ``previous_version(path)``.
    """
    path = Path(path)
    tensors: Dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[f"{prefix}.{k}"] = v.detach().cpu().contiguous().clone()
    meta: Dict[str, Any] = {"info": info}
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _flatten_optimizer(optimizer.state_dict())
        tensors.update({k: v.cpu() for k, v in opt_tensors.items()})
    if path.exists():
        prev = previous_version(path)
        tmp = prev.with_name(prev.name + ".tmp")
        tmp.unlink(missing_ok=True)
        os.link(path, tmp)
        os.replace(tmp, prev)
    with atomic_write(path) as f:
        f.write(save(tensors, metadata={"metricvision": json.dumps(meta)}))


def load_checkpoint(path: str | os.PathLike, modules: Dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None = None) -> Dict[str, Any]:
    """Restore modules (and the optimizer) from ``path``; returns the saved ``info``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is damaged; the message says what to do.
    """
    path = Path(path)
    tensors, meta = _read(path, tensors=True)
    for prefix, module in modules.items():
        sub = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        module.load_state_dict(sub)
    if optimizer is not None and "optimizer" in meta:
        opt_tensors = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, meta["optimizer"]))
    return meta.get("info", {})


def read_info(path: str | os.PathLike) -> Dict[str, Any]:
    """The ``info`` of a checkpoint without loading its tensors (errors as ``load_checkpoint``)."""
    return _read(Path(path), tensors=False)[1].get("info", {})
