"""Checkpoints in safetensors, written to a temporary name and renamed.

Tensors: model and loss weights, optimizer state; everything else (epoch, optimizer
hyper-parameters, scheduler state, history) goes in the JSON metadata of the same file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from safetensors.torch import load_file, save
from safetensors import safe_open
from metricvision._atomic import atomic_write


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
    """Write modules' state dicts, the optimizer and ``info`` (JSON-able) atomically to ``path``."""
    path = Path(path)
    tensors: Dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[f"{prefix}.{k}"] = v.detach().cpu().contiguous().clone()
    meta: Dict[str, Any] = {"info": info}
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = _flatten_optimizer(optimizer.state_dict())
        tensors.update({k: v.cpu() for k, v in opt_tensors.items()})
    with atomic_write(path) as f:
        f.write(save(tensors, metadata={"metricvision": json.dumps(meta)}))


def load_checkpoint(path: str | os.PathLike, modules: Dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None = None) -> Dict[str, Any]:
    """Restore modules (and the optimizer) from ``path``; returns the saved ``info``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("metricvision", "{}"))
    for prefix, module in modules.items():
        sub = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        module.load_state_dict(sub)
    if optimizer is not None and "optimizer" in meta:
        opt_tensors = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, meta["optimizer"]))
    return meta.get("info", {})


def read_info(path: str | os.PathLike) -> Dict[str, Any]:
    """The ``info`` of a checkpoint without loading its tensors."""
    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("metricvision", "{}")).get("info", {})
