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
    p.add_argument("--api-keys", metavar="FILE",
                   help="file of 'KEY read|write' lines (default: $METRICVISION_API_KEYS; none: open access)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="origin allowed to call the API from a browser (repeatable; '*' for any)")
    p.add_argument("--rate-limit", type=float, help="requests per second per client (default: unlimited)")
    p.add_argument("--threads", type=int, default=4, help="worker threads for search, decoding and heat maps")
    p.add_argument("--budget-s", type=float, default=10.0, help="time budget of a request")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> None:
    try:
        import uvicorn
    except ImportError as e:
        raise ImportError("`serve` needs the 'serve' extra: pip install -e '.[serve]'") from e
    from metricvision.serve.access import ApiKeys
    from metricvision.serve.app import create_app

    keys = ApiKeys.load(args.api_keys)
    app = create_app(args.kb, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), api_keys=keys,
                     cors_origins=args.cors_origin, rate_limit=args.rate_limit, threads=args.threads,
                     budget_s=args.budget_s)
    access = f"{len(keys.keys)} API keys" if keys else "open access (no API keys)"
    print(f"serving {args.kb} on http://{args.host}:{args.port}/ ({access})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
