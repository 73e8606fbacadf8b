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
from typing import Any, Dict, List, Optional

COMMAND_MODULES = [
    "metricvision.commands",
    "metricvision.data.commands",
    "metricvision.kb.commands",
    "metricvision.localization.commands",
    "metricvision.serve.commands",
    "metricvision.engine.distributed_commands",
    "metricvision.engine.run_commands",
    "metricvision.engine.implant_commands",
]


def _cell(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "; ".join(_cell(v) for v in value) or "(none)"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_table(result: Dict[str, Any], indent: str = "") -> List[str]:
    """Lines of a readable table: ``key  value`` rows; a nested dict is a titled block, and its dicts
    of scalars with the same keys (e.g. one row of metrics per query kind) a grid, one column per key."""
    lines: List[str] = []
    width = max((len(str(k)) for k, v in result.items() if not isinstance(v, dict)), default=0)
    for key, value in result.items():
        if not isinstance(value, dict):
            lines.append(f"{indent}{str(key):<{width}}  {_cell(value)}")
            continue
        lines.append(f"{indent}{key}:")
        rows = [v for v in value.values() if isinstance(v, dict) and not any(isinstance(x, dict) for x in v.values())]
        grid = {k: v for k, v in value.items() if rows and isinstance(v, dict) and v.keys() == rows[0].keys()}
        rest = {k: v for k, v in value.items() if k not in grid}
        if len(grid) > 1:
            columns = list(rows[0])
            names = max(len(str(k)) for k in grid)
            widths = [max(len(str(c)), *(len(_cell(r[c])) for r in grid.values())) for c in columns]
            lines.append(f"{indent}  {'':<{names}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(columns, widths)))
            for name, row in grid.items():
                lines.append(f"{indent}  {str(name):<{names}}  " + "  ".join(f"{_cell(row[c]):>{w}}" for c, w in zip(columns, widths)))
        else:
            rest = value
        lines += format_table(rest, indent + "  ") if rest else []
    return lines


def print_result(result: Any, as_json: bool) -> None:
    """Print a command's result: JSON with --json, else a readable table / text."""
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    elif isinstance(result, dict):
        print("\n".join(format_table(result)))
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
    except (ValueError, KeyError, FileNotFoundError, ImportError) as e:
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
