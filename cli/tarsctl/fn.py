"""``tarsctl fn deploy|invoke``: users' own guest functions.

``tarsctl fn deploy FILE --name N --node TARSNODE [--namespace NS] [--capability C ...]`` checks FILE
(a Python file defining ``handle(input)``, a JavaScript ES module (``.js``) exporting ``handle``, or a
WebAssembly component of the ``tars:guest`` ``function`` world) with the same checks the operator and
the agents run, and refuses a bad one with the reason (for Python the line). A good one becomes a
ConfigMap ``N`` (key ``function.py`` or ``function.js`` in ``data``, or ``function.wasm`` in
``binaryData``) and a TarsModel ``N`` of kind ``function`` with
source ``configmap://N/KEY``, both server-side applied; ``--dry-run`` prints them instead.

``tarsctl fn invoke N --data JSON (--gateway URL | --agent URL)`` posts JSON to
``/v1/functions/N:invoke`` and prints the function's answer.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tars_api.functions import FunctionCode, InvalidFunction, check_code
from tars_api.labels import PREFIX
from tars_api.meta import API_VERSION
from tars_api.tarsmodel import HostCapability, TarsModel

FIELD_MANAGER = "tarsctl"
# The API server refuses objects over about 1.5 MiB and etcd values over 1 MiB; leave room for the rest.
MAX_CONFIGMAP_PAYLOAD = 900 * 1024
EXIT_INVALID = 2
EXIT_FAILED = 1


def read_function(path: Path) -> FunctionCode:
    """FILE as a function: ``.wasm`` is a component, ``.js``/``.mjs`` JavaScript, anything else Python.

    JavaScript goes as source: its component (componentize-js, about 12 MB) would not fit a ConfigMap,
    so the nodes build it, as they build Python."""
    if path.suffix == ".wasm":
        return FunctionCode("wasm", wasm=path.read_bytes(), origin=path.name)
    if path.suffix in (".js", ".mjs"):
        return FunctionCode("javascript", javascript=path.read_text(encoding="utf-8"), origin=path.name)
    return FunctionCode("python", python=path.read_text(encoding="utf-8"), origin=path.name)


def configmap_key(code: FunctionCode) -> str:
    return {"wasm": "function.wasm", "javascript": "function.js"}.get(code.language, "function.py")


def function_manifests(
    code: FunctionCode,
    name: str,
    node: str,
    namespace: str,
    capabilities: list[str],
    limits: dict[str, int],
    replicas: int = 1,
) -> list[dict[str, Any]]:
    """The ConfigMap holding the code and the TarsModel that serves it (validated by the API models)."""
    key = configmap_key(code)
    configmap: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {PREFIX + "function": name}},
    }
    if code.language == "wasm":
        configmap["binaryData"] = {key: base64.b64encode(code.wasm).decode("ascii")}
    else:
        configmap["data"] = {key: code.javascript if code.language == "javascript" else code.python}
    spec: dict[str, Any] = {
        "nodeRef": {"name": node},
        "kind": "function",
        "source": f"configmap://{name}/{key}",
        "replicas": replicas,
        "capabilities": capabilities,
    }
    if limits:
        spec["limits"] = limits
    model = {"apiVersion": API_VERSION, "kind": "TarsModel", "metadata": {"name": name, "namespace": namespace}}
    model["spec"] = spec
    TarsModel.model_validate(model)  # the API server would refuse it anyway; say so before applying
    return [configmap, model]


def _payload_size(code: FunctionCode) -> int:
    return len(code.wasm) if code.language == "wasm" else len((code.javascript or code.python).encode())


def _kube() -> Any:
    from tars_common.kube import load_client_config
    from tars_operator.kube import Kube

    return Kube(load_client_config())


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c.get("type") == kind), {})


def wait_for_verdict(kube: Any, namespace: str, name: str, timeout_s: float) -> tuple[bool, str]:
    """(ok, message) once the TarsModel is Ready or Degraded for the current generation."""
    deadline = time.monotonic() + timeout_s
    while True:
        obj = kube.get_sync(API_VERSION, "TarsModel", namespace, name)
        if obj is None:
            return False, "deleted while waiting"
        generation = obj["metadata"].get("generation")
        ready, degraded = _condition(obj, "Ready"), _condition(obj, "Degraded")
        if (obj.get("status") or {}).get("observedGeneration") == generation:
            if degraded.get("status") == "True":
                return False, f"{degraded.get('reason')}: {degraded.get('message')}"
            if ready.get("status") == "True":
                return True, f"{ready.get('reason')}: {ready.get('message')}"
        if time.monotonic() > deadline:
            return False, f"not ready after {timeout_s:.0f} s ({ready.get('reason', 'no status yet')})"
        time.sleep(0.5)


def _limits(args: argparse.Namespace) -> dict[str, int]:
    pairs = {"memoryMiB": args.memory_mib, "cpuTimeMs": args.cpu_time_ms, "outputBytes": args.output_bytes}
    return {key: value for key, value in pairs.items() if value is not None}


def deploy(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        code = read_function(path)
        check_code(code)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"tarsctl fn deploy: cannot read {path}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except InvalidFunction as exc:
        print(f"tarsctl fn deploy: refused: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if _payload_size(code) > MAX_CONFIGMAP_PAYLOAD:
        print(
            f"tarsctl fn deploy: {path} is {_payload_size(code)} bytes, too large for a ConfigMap "
            f"({MAX_CONFIGMAP_PAYLOAD}); put it on the nodes and use source file:///path instead",
            file=sys.stderr,
        )
        return EXIT_INVALID
    manifests = function_manifests(
        code, args.name, args.node, args.namespace, args.capability, _limits(args), args.replicas
    )
    if args.dry_run:
        import yaml

        print(yaml.safe_dump_all(manifests, sort_keys=False), end="")
        return 0
    kube = _kube()
    for obj in manifests:
        kube.apply_sync(obj, field_manager=FIELD_MANAGER)
        print(f"{obj['kind'].lower()}/{args.name} applied in namespace {args.namespace}")
    if args.wait > 0:
        ok, message = wait_for_verdict(kube, args.namespace, args.name, args.wait)
        print(f"tarsmodel/{args.name}: {message}", file=sys.stdout if ok else sys.stderr)
        return 0 if ok else EXIT_FAILED
    return 0


def invoke_url(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/v1/functions/{name}:invoke"


def invoke(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.data)
    except json.JSONDecodeError as exc:
        print(f"tarsctl fn invoke: --data is not JSON: {exc}", file=sys.stderr)
        return EXIT_INVALID
    request = urllib.request.Request(
        invoke_url(args.gateway or args.agent, args.name),
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            print(response.read().decode())
            return 0
    except urllib.error.HTTPError as err:
        body = err.read().decode(errors="replace")
        print(f"tarsctl fn invoke: HTTP {err.code}: {body}", file=sys.stderr)
        return EXIT_FAILED
    except urllib.error.URLError as err:
        print(f"tarsctl fn invoke: {err.reason}", file=sys.stderr)
        return EXIT_FAILED


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fn", help="your own guest functions: deploy and invoke")
    actions = parser.add_subparsers(dest="fn_command", required=True)

    dep = actions.add_parser("deploy", help="check a function file, then apply it as a ConfigMap and a TarsModel")
    dep.add_argument(
        "file",
        help="Python file defining handle(input), JavaScript module (.js) exporting handle, or a .wasm component "
        "of tars:guest/function (Rust, C, ...)",
    )
    dep.add_argument("--name", required=True, help="name of the function (TarsModel and ConfigMap)")
    dep.add_argument("--node", required=True, help="the TarsNode whose agents serve it")
    dep.add_argument("--namespace", default="default")
    dep.add_argument(
        "--capability",
        action="append",
        default=[],
        choices=[c.value for c in HostCapability],
        help="a host capability the function may call (repeatable); every other call is refused",
    )
    dep.add_argument("--replicas", type=int, default=1)
    dep.add_argument("--memory-mib", type=int, help="sandbox memory limit (the TarsNode's ceiling still applies)")
    dep.add_argument("--cpu-time-ms", type=int, help="CPU time per request (within the TarsNode's ceiling)")
    dep.add_argument("--output-bytes", type=int, help="largest output per request (within the TarsNode's ceiling)")
    dep.add_argument("--dry-run", action="store_true", help="print the manifests instead of applying them")
    dep.add_argument("--wait", type=float, default=0, help="seconds to wait for Ready (or the reason it is not)")
    dep.set_defaults(func=deploy)

    inv = actions.add_parser("invoke", help="call a function with JSON input")
    inv.add_argument("name")
    inv.add_argument("--data", required=True, help="the JSON input")
    target = inv.add_mutually_exclusive_group(required=True)
    target.add_argument("--gateway", help="the tars-gateway URL, e.g. http://127.0.0.1:8000")
    target.add_argument("--agent", help="a node-agent URL, e.g. http://127.0.0.1:8080")
    inv.add_argument("--timeout", type=float, default=60.0)
    inv.set_defaults(func=invoke)
