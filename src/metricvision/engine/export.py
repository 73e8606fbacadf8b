"""Exporting a run's Embedder to ONNX or TorchScript, with its preprocessing recorded beside it.

The exported graph maps (batch, 3, S, S) RGB images in [0, 1] to (batch, D) L2-normalized
embeddings (ImageNet normalization is inside); ``<file>.json`` says how to make that input.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from metricvision._atomic import atomic_write
from metricvision.engine.card import preprocessing
from metricvision.engine.runs import load_run

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


def export_run(run_dir: str | Path, fmt: str, out: Optional[str | Path] = None) -> Dict[str, Any]:
    """Export the run's model; returns what was written.

    Args:
        run_dir: a run folder written by `metricvision train`.
        fmt: "onnx" (dynamic batch size; needs the ``export`` extra) or "torchscript" (traced).
        out: output file (default ``run_dir/model.onnx`` or ``run_dir/model.pt``).

    Returns:
        {"model": path, "preprocessing": path of the json beside it, "format", "dim", "image_size"}.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got '{fmt}'")
    recipe, model = load_run(run_dir)
    model.requires_grad_(False)  # an inference graph: outputs need no autograd history
    size = recipe.data.image_size
    out = Path(out) if out is not None else Path(run_dir) / f"model{FORMATS[fmt]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, 3, size, size)
    tmp = out.with_name(f".{out.name}.tmp{FORMATS[fmt]}")
    try:
        if fmt == "onnx":
            _onnx(model, example, tmp)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the shape check in Embedder.features is traced as a constant
                torch.jit.save(torch.jit.trace(model, example), str(tmp))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    info = {"format": fmt, "model": out.name, "dim": model.dim, "image_size": size, "recipe": recipe.name,
            "input_name": "images", "output_name": "embeddings", "preprocessing": preprocessing(size)}
    meta = out.with_name(out.name + ".json")
    with atomic_write(meta) as f:
        f.write(json.dumps(info, indent=2).encode())
    return {"model": str(out), "preprocessing": str(meta), "format": fmt, "dim": model.dim, "image_size": size}


def _onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
    except ImportError as e:
        raise ImportError("ONNX export needs the 'export' extra: pip install -e '.[export]'") from e
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["images"], output_names=["embeddings"],
                          dynamo=True, dynamic_shapes={"images": {0: batch}}, external_data=False, verbose=False)
