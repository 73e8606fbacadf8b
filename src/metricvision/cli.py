"""The `metricvision` command.

Each area contributes its sub-commands through a module with ``add_commands(subparsers)``
(listed in ``COMMAND_MODULES``); heavy imports happen inside the command functions so that
``metricvision --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, List, Optional

COMMAND_MODULES = [
    "metricvision.commands",
    "metricvision.data.commands",
    "metricvision.kb.commands",
    "metricvision.localization.commands",
    "metricvision.serve.commands",
    "metricvision.engine.distributed_commands",
]


def print_result(result: Any, as_json: bool) -> None:
    """Print a command's result: JSON with --json, else a readable table / text."""
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    elif isinstance(result, dict):
        width = max((len(str(k)) for k in result), default=0)
        for k, v in result.items():
            print(f"{str(k):<{width}}  {v:.4f}" if isinstance(v, float) else f"{str(k):<{width}}  {v}")
    elif result is not None:
        print(result)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every available command module's sub-commands."""
    parser = argparse.ArgumentParser(prog="metricvision", description="Metric learning for visual representations.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        module.add_commands(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"metricvision {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print_result(result, getattr(args, "json", False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
