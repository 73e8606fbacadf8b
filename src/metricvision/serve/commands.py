"""CLI: `metricvision serve KB`."""
from __future__ import annotations

import argparse


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `serve`."""
    p = subparsers.add_parser("serve", help="serve a knowledge base over HTTP (API + web page)")
    p.add_argument("kb", help="the KB folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--max-upload-mb", type=float, default=8.0, help="largest accepted upload")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> None:
    try:
        import uvicorn
    except ImportError as e:
        raise ImportError("`serve` needs the 'serve' extra: pip install -e '.[serve]'") from e
    from metricvision.serve.app import create_app

    app = create_app(args.kb, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
    print(f"serving {args.kb} on http://{args.host}:{args.port}/")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
