"""`tarsctl samples delete`: delete TarsNodes and TarsModels by label and wait until they are gone.

The chart runs it as a pre-delete hook: the operator's finalizers on the samples can only be removed
while the operator still runs, so the samples must go before Helm removes the operator.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from tars_api import GROUP, VERSION

PLURALS = ("tarsmodels", "tarsnodes")  # models first: they refer to their TarsNode


def remaining(api: Any, namespace: str, selector: str) -> list[str]:
    names = []
    for plural in PLURALS:
        items = api.list_namespaced_custom_object(GROUP, VERSION, namespace, plural, label_selector=selector)["items"]
        names += [f"{plural}/{item['metadata']['name']}" for item in items]
    return names


def delete_and_wait(api: Any, namespace: str, selector: str, timeout_s: float) -> list[str]:
    """Deletes what ``selector`` matches; returns what is still there after ``timeout_s`` (empty: all gone)."""
    for plural in PLURALS:
        api.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, plural, label_selector=selector)
    deadline = time.monotonic() + timeout_s
    while (left := remaining(api, namespace, selector)) and time.monotonic() < deadline:
        time.sleep(1.0)
    return left


def _run(args: argparse.Namespace) -> int:
    from kubernetes import client

    from tars_common.kube import load_client_config

    api = client.CustomObjectsApi(load_client_config())
    left = delete_and_wait(api, args.namespace, args.selector, args.timeout)
    if left:
        print(f"still present after {args.timeout:.0f}s (is the operator running?): {', '.join(left)}")
        return 1
    print(f"deleted every TarsModel and TarsNode in {args.namespace} matching {args.selector}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("samples", help="the chart's sample TarsNodes and TarsModels")
    actions = parser.add_subparsers(dest="action", required=True)
    delete = actions.add_parser("delete", help="delete them by label and wait until the operator let them go")
    delete.add_argument("-n", "--namespace", required=True)
    delete.add_argument("-l", "--selector", required=True, help="label selector, e.g. app.kubernetes.io/instance=tars")
    delete.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for them to be gone")
    delete.set_defaults(func=_run)
