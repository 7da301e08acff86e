"""`python -m sandbox serve --ray ADDRESS --store DIR`: the function host as a Ray Serve
application on an existing cluster (serve.py), until SIGINT/SIGTERM. One line on stderr
and exit status 2 for a bad command line, 1 if it cannot start."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

APP_NAME = "sandbox-host"


def serve_cluster(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from ..host.config import ConfigFileError, read_config_file
    from .catalog import ClusterStore
    from .pool import NO_SIGNAL_HANDLER, connect
    from .serve import build_app

    if args.store is None:
        print("error: --ray needs --store DIR (the cluster function store)", file=sys.stderr)
        return 2
    if not 0 <= args.min_replicas <= args.max_replicas or args.max_replicas < 1:
        print("error: need 0 <= --min-replicas <= --max-replicas, 1 <= --max-replicas",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        settings = read_config_file(args.config) if args.config else {}
        store = ClusterStore(args.store)
        os.environ.setdefault(NO_SIGNAL_HANDLER, "1")  # see pool.py
        connect(args.ray, log_to_driver=False)
    except (ConfigFileError, OSError, ConnectionError) as exc:
        print(f"error: cannot start the cluster host: {exc}", file=sys.stderr)
        return 1
    settings = {k: v for k, v in settings.items() if k not in ("host", "port", "data_dir")}
    host, port = args.host or "127.0.0.1", args.port if args.port is not None else 8080
    # Ray's core worker installs a fatal-signal handler for SIGTERM (it logs and aborts);
    # ours, installed after ray.init, replaces it: the host stops in order instead.
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    try:
        serve.start(http_options={"host": host, "port": port, "location": "EveryNode"})
        serve.run(
            build_app(
                str(store.root),
                settings,
                min_replicas=args.min_replicas,
                max_replicas=args.max_replicas,
            ),
            name=APP_NAME,
            route_prefix="/",
        )
        print(f"serving on http://{host}:{port} (Ray Serve, every node's proxy); "
              f"functions in {store.root}", file=sys.stderr, flush=True)  # fmt: skip
        while not stopped.wait(0.5):
            pass
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
    return 0
