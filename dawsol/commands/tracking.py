"""``dawsol tracking init|ui``: create the MLflow store once, or browse it."""

from __future__ import annotations

import argparse

HELP = (
    "MLflow store: 'init' creates it (once, before parallel cells), 'ui' serves it on 127.0.0.1 and prints "
    "the URLs of the runs and of the results"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["init", "ui"], help="init: create the store; ui: run mlflow ui")
    parser.add_argument("--host", default="127.0.0.1", help="ui: address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5000, help="ui: port (default: 5000)")


def run(args: argparse.Namespace) -> int:
    from dawsol import tracking
    from dawsol.errors import DawsolError

    if args.action == "init":
        _, experiment_id = tracking.init_store()
        print(f"MLflow store {tracking.tracking_uri()}: experiment {tracking.experiment_name()!r} ({experiment_id})")
        return 0
    tracking.check_port_free(args.host, args.port)
    client, experiment_id = tracking.init_store()
    table = tracking.results_table(client, experiment_id)
    urls = tracking.browse_urls(args.host, args.port, experiment_id, table)
    print(f"MLflow UI, the runs of experiment {tracking.experiment_name()!r}: {urls['runs']}")
    if tracking.has_results_view(client, experiment_id) and table is not None:
        print(f"the results, a summary run per method with the seed means as columns: {urls['results']}")
        print(f"the results table of the newest grid run (its Artifacts, tables/): {urls['table']}", flush=True)
    else:
        print("the results: none yet (`dawsol report` logs them)", flush=True)
    code = tracking.serve(args.host, args.port)
    if code != 0:
        raise DawsolError(f"mlflow ui on {args.host}:{args.port} stopped with exit code {code}")
    return 0
