"""`tarsctl cluster build|up|down|status|add-node`: the local control plane from the command line."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from tarsctl import localcluster, realnode

console = Console()


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--labels expects KEY=VALUE, got {pair!r}")
        labels[key] = value
    return labels


def down(quiet: bool = False, log: Callable[[str], None] = print) -> list[str]:
    """Stops the real nodes that joined the local control plane, then the control plane itself."""
    realnode.stop_all(localcluster.state_dir(), log=log if not quiet else lambda _: None)
    return localcluster.down(quiet=quiet, log=log)


def _require_running() -> localcluster.ClusterState:
    state = localcluster.running()
    if state is None:
        raise SystemExit("no local control plane is running; start one with `tarsctl cluster up`")
    return state


def _build(_args: argparse.Namespace) -> int:
    localcluster.build_binaries(console.print)
    return 0


def _up(args: argparse.Namespace) -> int:
    if os.environ.get("KUBECONFIG") and not args.local:
        console.print(
            f"KUBECONFIG={os.environ['KUBECONFIG']} is set: tarsctl uses that cluster "
            "(pass --local to start the embedded control plane anyway)"
        )
        return 0
    state = localcluster.up(console.print)
    console.print(f"export KUBECONFIG={state.kubeconfig}")
    return 0


def _down(_args: argparse.Namespace) -> int:
    down(log=console.print)
    return 0


def _status(_args: argparse.Namespace) -> int:
    current = localcluster.running()
    if current is None:
        console.print("no local control plane is running")
        return 1
    table = Table("component", "pid", title=f"local control plane {current.server}")
    for name, pid in current.pids.items():
        table.add_row(name, str(pid))
    console.print(table)
    console.print(localcluster.kubectl(current, "get", "nodes", "-o", "wide").stdout)
    return 0


def _add_node(args: argparse.Namespace) -> int:
    if not args.name:
        raise SystemExit("add-node needs a NAME")
    state = _require_running()
    if args.real:
        if len(args.name) != 1:
            raise SystemExit("--real adds one node (one kubelet per machine)")
        realnode.add(state, args.name[0], kvm=args.kvm, labels=_labels(args.labels), log=console.print)
        return 0
    for name in args.name:
        localcluster.add_node(state, name, kvm=args.kvm, labels=_labels(args.labels))
        console.print(f"node/{name} registered (simulated{', KVM' if args.kvm else ''})")
    return 0


ACTIONS: dict[str, Callable[[argparse.Namespace], int]] = {
    "build": _build,
    "up": _up,
    "down": _down,
    "status": _status,
    "add-node": _add_node,
}


def _run(args: argparse.Namespace) -> int:
    return ACTIONS[args.action](args)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("cluster", help="the embedded local control plane")
    parser.add_argument("action", choices=list(ACTIONS))
    parser.add_argument("name", nargs="*", help="node names for add-node")
    parser.add_argument("--kvm", action="store_true", help="label the node KVM-capable")
    parser.add_argument(
        "--real", action="store_true", help="add-node: a real node (containerd + kubelet on this machine), not kwok"
    )
    parser.add_argument("--labels", nargs="*", default=[], metavar="KEY=VALUE", help="extra node labels")
    parser.add_argument("--local", action="store_true", help="start the local control plane even if KUBECONFIG is set")
    parser.set_defaults(func=_run)
