"""`tarsctl demo`: the TARS run on the local control plane (or KUBECONFIG's cluster), measured.

tarsctl demo [--plan examples/demo/plan.yaml] [--agents N] [--keep] [--report-dir report]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from tarsctl.demo.phases import Demo, Options
from tarsctl.demo.plan import DEFAULT_PLAN, PlanError, load_plan


def _run(args: argparse.Namespace) -> int:
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # a log file: no wrapping of the result tables
    try:
        plan = load_plan(Path(args.plan))
    except PlanError as exc:
        console.print(f"[red]{exc}")
        return 2
    options = Options(
        plan=plan,
        report_dir=Path(args.report_dir),
        keep=args.keep,
        local=args.local,
        namespace=args.namespace,
        agents=args.agents,
        workdir=Path(args.workdir) if args.workdir else None,
    )
    Demo(options, console).execute()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run and measure the TARS demo (see examples/demo/plan.yaml)")
    parser.add_argument("--plan", default=str(DEFAULT_PLAN), help="the demo plan (YAML)")
    parser.add_argument("--agents", type=int, default=None, help="simulated nodes, one agent each (plan's default)")
    parser.add_argument("--keep", action="store_true", help="leave the namespace and processes running")
    parser.add_argument("--report-dir", default="report", help="where report.md/json/html go")
    parser.add_argument("--namespace", default=None, help="namespace to create (plan's default)")
    parser.add_argument("--local", action="store_true", help="use the local control plane even if KUBECONFIG is set")
    parser.add_argument("--workdir", default=None, help="for checkpoints and process logs (a temporary folder)")
    parser.set_defaults(func=_run)
