"""CLI: `metricvision info RUN` (the model card) and `metricvision export RUN` (ONNX / TorchScript)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `info` and `export`."""
    p = sub.add_parser("info", help="print a run's model card: model, preprocessing, data and its licence, metrics")
    p.add_argument("run", type=Path, help="run folder written by `metricvision train`")
    p.add_argument("--json", action="store_true", help="print the card as JSON")
    p.set_defaults(func=info)

    p = sub.add_parser("export", help="export a run's embedder to ONNX or TorchScript, preprocessing in a json beside it")
    p.add_argument("run", type=Path, help="run folder written by `metricvision train`")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="file format (default: onnx)")
    p.add_argument("--out", type=Path, help="output file (default: RUN/model.onnx or RUN/model.pt)")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=export)


def info(args: argparse.Namespace) -> Dict[str, Any]:
    """`metricvision info`."""
    from metricvision.engine.card import read_model_card

    return read_model_card(args.run)


def export(args: argparse.Namespace) -> Dict[str, Any]:
    """`metricvision export`."""
    from metricvision.engine.export import export_run

    return export_run(args.run, args.format, args.out)
