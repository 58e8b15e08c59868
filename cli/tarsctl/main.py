"""tarsctl: the command line for TARS on Kubernetes."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Each sub-command lives in its own module with a register(subparsers) hook.
COMMAND_MODULES = [
    "crds",
    "cluster",
    "models",
    "demo_cmd",
    "security_cmd",
    "fn",
    "status_cmd",
    "samples_cmd",
    "knowledge_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tarsctl", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"tarsctl.{name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
