"""tars-operator: runs the kopf operator in-cluster or against a kubeconfig."""

from __future__ import annotations

import argparse
import asyncio
import logging
import random

import kopf
from prometheus_client import start_http_server

from tars_common.kube import load_client_config
from tars_operator import handlers, toggles
from tars_operator.kube import Kube
from tars_operator.reconciler import Reconciler


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tars-operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", default=True, help="watch every namespace (default)"
    )
    scope.add_argument("-n", "--namespace", action="append", help="watch only these namespaces")
    parser.add_argument("--standalone", action="store_true", help="no peering: act even if a peer is active")
    parser.add_argument("--priority", type=int, help="peering priority (default: random per process)")
    parser.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics port (0: off)")
    parser.add_argument("--health-port", type=int, default=8081, help="liveness /healthz port (0: off)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # kopf's own per-object loggers prefix each line with [namespace/name].
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "debug":
        # kopf logs every handler and timer run at INFO; at the default level that is noise.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.metrics_port:
        start_http_server(args.metrics_port)
    assert handlers  # imported for its kopf registrations
    toggles.install()
    asyncio.run(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=args.namespace or [],
            standalone=args.standalone,
            peering_name=handlers.PEERING_NAME,
            memo=handlers.OperatorMemo(reconciler=Reconciler(Kube(load_client_config()))),
            # Equal priorities would pause both replicas, so each draws its own unless told.
            priority=args.priority if args.priority is not None else random.randint(1, 1_000_000),
            liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None,
        )
    )


if __name__ == "__main__":
    main()
