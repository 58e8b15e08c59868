"""`tarsctl status [-n NAMESPACE]`: each TarsNode and TarsModel, what is wrong with it, and what to
do next. It reads only the objects' status, which the operator writes, so it works on any cluster.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from rich.console import Console

from tars_api import GROUP, VERSION

console = Console()

# Conditions whose healthy status is False; for every other type, True is healthy.
HEALTHY_WHEN_FALSE = {"Degraded", "Progressing"}
# What to do next for reasons whose message does not already say it.
NEXT_STEP = {
    "NoKVMNodes": "label the nodes agents may run on: kubectl label node NODE tars.hyperlight.dev/kvm=true",
    "NoAgentsReady": "see the TarsNode's PodsHealthy condition and the agent pods (kubectl get pods -l "
    "app.kubernetes.io/name=tars-agent)",
    "AgentsLost": "check the named nodes; the operator moves their models to other agents",
    "NodeNotFound": "create the TarsNode that spec.nodeRef names, or fix the name",
    "DaemonSetPending": "is the operator running? (kubectl get pods -l app.kubernetes.io/component=operator)",
}


def _problems(obj: dict[str, Any]) -> list[str]:
    lines = []
    for cond in obj.get("status", {}).get("conditions", []):
        healthy_status = "False" if cond["type"] in HEALTHY_WHEN_FALSE else "True"
        healthy = cond.get("status") == healthy_status
        if healthy or (cond["type"] == "Progressing" and cond.get("reason") == "RollingOut"):
            continue
        line = f"{cond['type']}={cond.get('status')} {cond.get('reason', '')}: {cond.get('message', '')}".rstrip(": ")
        if step := NEXT_STEP.get(cond.get("reason", "")):
            line += f"\n      next: {step}"
        lines.append(line)
    return lines


def describe(tarsnodes: list[dict[str, Any]], models: list[dict[str, Any]]) -> list[str]:
    """Report lines: one per object, then its problems indented; objects without status say so."""
    out = []
    for kind, items in (("TarsNode", tarsnodes), ("TarsModel", models)):
        for obj in sorted(items, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"])):
            meta, status = obj["metadata"], obj.get("status") or {}
            if kind == "TarsNode":
                summary = (
                    f"{status.get('readyAgents', 0)}/{status.get('desiredAgents', 0)} agents ready, "
                    f"backend {status.get('backend') or '-'}"
                )
            else:
                summary = f"{status.get('readyReplicas', 0)}/{obj.get('spec', {}).get('replicas', '?')} replicas ready"
            no_status = "no status yet: is the operator running and watching this namespace?"
            problems = _problems(obj) if status else [no_status]
            out.append(f"{kind} {meta['namespace']}/{meta['name']}: {'OK' if not problems else 'NOT OK'} ({summary})")
            out.extend(f"    {p}" for p in problems)
    return out or ["no TarsNodes or TarsModels found"]


def _list(api: Any, plural: str, namespace: str | None) -> list[dict[str, Any]]:
    if namespace:
        result = api.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
    else:
        result = api.list_cluster_custom_object(GROUP, VERSION, plural)
    items: list[dict[str, Any]] = result["items"]
    return items


def _run(args: argparse.Namespace) -> int:
    from kubernetes import client

    from tars_common.kube import load_client_config
    from tarsctl import localcluster

    kubeconfig = None
    if not os.environ.get("KUBECONFIG") and (state := localcluster.running()) is not None:
        kubeconfig = str(state.kubeconfig)
    api = client.CustomObjectsApi(load_client_config(kubeconfig))
    lines = describe(_list(api, "tarsnodes", args.namespace), _list(api, "tarsmodels", args.namespace))
    for line in lines:
        console.print(line, markup=False, highlight=False)
    return 1 if any(" NOT OK " in line for line in lines) else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="TarsNodes and TarsModels: what is wrong and what to do next")
    parser.add_argument("-n", "--namespace", help="only this namespace (default: all)")
    parser.set_defaults(func=_run)
