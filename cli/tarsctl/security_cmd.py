"""`tarsctl security-check`: deploy hostile guest functions into a running TARS namespace and attack.

tarsctl security-check --namespace NS --tarsnode NAME --gateway URL [--grant CAP ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from tarsctl.demo import security
from tarsctl.demo.phases import print_security
from tarsctl.demo.plan import DEFAULT_PLAN, PlanError, load_plan
from tarsctl.demo.system import connect


def _run(args: argparse.Namespace) -> int:
    console = Console()
    try:
        limits = load_plan(Path(args.plan)).security
    except PlanError as exc:
        console.print(f"[red]{exc}")
        return 2
    state, _ = connect(args.local, log=lambda line: None)
    target = security.Target(
        state, args.namespace, args.tarsnode, args.gateway.rstrip("/"), [Path(p) for p in args.agent_log]
    )
    check = security.SecurityCheck(target, limits, args.grant, progress=lambda label: console.print(f"- {label}"))
    console.print(f"deploying {security.HOSTILE_NAME} into {args.namespace} ...")
    check.deploy()
    try:
        result = check.run()
    finally:
        if not args.keep:
            check.cleanup()
    print_security(console, result)
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_json(), indent=2))
    return 0 if result.score == 1.0 else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("security-check", help="attack a running TARS namespace with hostile functions")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--tarsnode", default="tars")
    parser.add_argument("--gateway", required=True, help="the tars-gateway URL serving the namespace")
    parser.add_argument("--plan", default=str(DEFAULT_PLAN), help="limits and neighbour test (plan's security)")
    parser.add_argument(
        "--grant", action="append", default=[], help="capability to grant the hostile function (weakens the check)"
    )
    parser.add_argument("--agent-log", action="append", default=[], help="agent log files to search for leaks")
    parser.add_argument("--json", default=None, help="write the result as JSON here")
    parser.add_argument("--keep", action="store_true", help="leave the hostile function deployed")
    parser.add_argument("--local", action="store_true", help="use the local control plane even if KUBECONFIG is set")
    parser.set_defaults(func=_run)
