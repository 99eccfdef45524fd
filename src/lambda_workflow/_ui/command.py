"""The ``ui`` subcommand: ``lambda-workflow ui (--db FILE | --table NAME) [--port N]
[--allow-actions] [--run FILE.py]``. Kept apart from ``app`` so that the command line parses
without importing the web stack."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["add_parser", "run_command"]


def add_parser(sub: Any) -> None:
    ui = sub.add_parser("ui", help="serve a web console of the instances on 127.0.0.1")
    source = ui.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", help="the SQLite state file")
    source.add_argument("--table", help="a deployment's DynamoDB table (AWS credentials, "
                                        "region and endpoint from the usual AWS environment "
                                        "variables)")
    ui.add_argument("--port", type=int, default=8765,
                    help="the port on 127.0.0.1 (default 8765; 0 picks a free one)")
    ui.add_argument("--allow-actions", action="store_true",
                    help="offer cancel, callback complete/fail, resume and reset (each behind "
                         "a confirmation); without it the console only reads")
    ui.add_argument("--run", metavar="FILE.py",
                    help="with --db: the workflow's module, which an action's activation runs "
                         "(needed to complete or fail a callback on a state file)")
    ui.add_argument("--queue-url", help="with --table: the deployment's workflow queue for "
                                        "actions (default: LAMBDA_WORKFLOW_QUEUE_URL)")


def run_command(args: argparse.Namespace, out: TextIO,
                table_client: Callable[..., Any]) -> int:
    if not 0 <= args.port <= 65535:
        print(f"lambda-workflow ui: --port {args.port} is not a port (0 to 65535)",
              file=sys.stderr)
        return 2
    if args.run and args.table:
        print("lambda-workflow ui: --run works with --db only; on AWS the deployment's "
              "functions run the instances", file=sys.stderr)
        return 2
    try:
        from .app import Console, serve
    except ImportError as exc:
        print(f"lambda-workflow ui: the console needs starlette, uvicorn and jinja2 (pip "
              f"install 'lambda-workflow[ui]'): {exc}", file=sys.stderr)
        return 1
    if args.db:
        from pathlib import Path

        if not Path(args.db).is_file():
            print(f"lambda-workflow ui: no such state file: {args.db}", file=sys.stderr)
            return 1
    console = Console(db=args.db, table=args.table, run=args.run, queue_url=args.queue_url,
                      allow_actions=args.allow_actions, table_client=table_client)

    def ready(port: int) -> None:
        print(f"lambda-workflow console of {console.label} on http://127.0.0.1:{port}/"
              f"{' (actions allowed)' if console.allow_actions else ''}; Ctrl-C stops it",
              file=out, flush=True)

    serve(console, args.port, ready=ready)
    return 0
