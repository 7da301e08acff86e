"""`python -m sandbox serve` (and `python -m sandbox.host`): the command line of the
function host. Errors are one line on stderr and exit status 2 (bad configuration) or
1 (cannot start)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DESCRIPTION = (
    "Run the serverless function host: deploy functions over HTTP and run every request "
    "in fresh sandbox state. Settings come from the options, then SANDBOX_HOST_* "
    "environment variables, then the --config file (TOML or JSON), then defaults; see "
    "docs/host.md."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `serve` (the caller's parser, e.g. a subparser)."""
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default 8080; 0: any free port)")
    parser.add_argument("--data-dir", type=Path, help="where deployed functions are stored")
    parser.add_argument("--config", type=Path, help="config file (TOML, or JSON if *.json)")
    cluster = parser.add_argument_group(
        "on a Ray cluster (the ray extra; docs/cluster.md)",
        "With --ray, Ray Serve runs the host's replicas on the cluster's KVM nodes and "
        "--host/--port are its HTTP proxies' address; --data-dir is not used (each "
        "replica has its own), --store holds the functions.",
    )
    cluster.add_argument("--ray", metavar="ADDRESS", help='the Ray cluster ("auto", host:port)')
    cluster.add_argument(
        "--store", type=Path, help="the cluster function store: a directory every node mounts"
    )
    cluster.add_argument("--min-replicas", type=int, default=1, help="default 1 (0: scale to zero)")
    cluster.add_argument("--max-replicas", type=int, default=4, help="default 4")


EXTRA_HINT = "pip install 'kvm-sandbox[host]'"


def run(args: argparse.Namespace) -> int:
    """Loads the configuration from `args` and serves until stopped."""
    if getattr(args, "ray", None):
        try:
            from ..ray.cli import serve_cluster
        except ImportError as exc:
            print(f"error: --ray needs Ray ({exc.name}): pip install 'kvm-sandbox[ray]'",
                  file=sys.stderr)  # fmt: skip
            return 2
        return serve_cluster(args)
    if getattr(args, "store", None) is not None:
        print("error: --store is the cluster function store: it needs --ray", file=sys.stderr)
        return 2
    try:
        from pydantic import ValidationError

        from .auth import TokenError
        from .config import ConfigFileError, load_config
        from .server import serve
        from .store import StoreError
    except ImportError as exc:
        print(
            f"error: the function host needs packages that are not installed ({exc.name}): "
            f"{EXTRA_HINT}",
            file=sys.stderr,
        )
        return 2

    try:
        config = load_config(args.config, host=args.host, port=args.port, data_dir=args.data_dir)
    except ConfigFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        print(f"error: invalid configuration: {problems}", file=sys.stderr)
        return 2
    try:
        return serve(config)
    except (OSError, TokenError, StoreError) as exc:
        print(f"error: cannot start the host: {exc}", file=sys.stderr)
        return 1


def add_serve_parser(sub: Any) -> argparse.ArgumentParser:
    """Adds `serve` to the subcommands `sub` of `python -m sandbox` (the action of
    `parser.add_subparsers()`); its `func` is `run`. Imports nothing heavy."""
    serve: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run the serverless function host (deploy over HTTP; docs/host.md)",
        description=DESCRIPTION,
    )
    add_arguments(serve)
    serve.set_defaults(func=run)
    return serve


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.host", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))
