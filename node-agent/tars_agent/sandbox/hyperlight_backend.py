"""The ``hyperlight`` backend: guests run in Hyperlight micro-VMs through the hyperlight-sandbox package.

hyperlight-sandbox's Python API runs Python source in its packaged CPython guest
(``python-sandbox.wasm``, inside hyperlight-wasm, inside a micro-VM); it does not take our component.
So the same guest app runs here from source: a prelude provides the ``wit_world`` and
``componentize_py_types`` modules the app imports (``host.call`` becomes the executor's
``call_tool``), runs the app's top level once, and the sandbox is snapshotted. Each request restores
that snapshot first, so it starts from the pre-initialised state and sees nothing an earlier request
left, which is the micro-VM equivalent of a fresh Wasmtime instance.

The package offers no CPU deadline: wall time is enforced by the pool (the request is answered with a
timeout), and memory by the micro-VM's heap size.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from tars_agent.sandbox.base import (
    FailureReason,
    GuestFailure,
    GuestInstance,
    GuestSource,
    HostCall,
    HostCallRefused,
    Limits,
    PreparedGuest,
    SandboxBackend,
    check_output,
)

log = logging.getLogger(__name__)

RESULT_MARKER = "\x1etars-result:"

PRELUDE = r"""
import json as _json, sys as _sys, types as _types

class Err(Exception):
    def __init__(self, value):
        super().__init__(value)
        self.value = value

_cpt = _types.ModuleType("componentize_py_types")
_cpt.Err = Err
_sys.modules["componentize_py_types"] = _cpt

def _host_call(name, args_json):
    reply = _json.loads(call_tool("tars_host", name=name, args_json=args_json))
    if "err" in reply:
        raise Err(reply["err"])
    return reply["ok"]

_ww = _types.ModuleType("wit_world")
_ww.WitWorld = type("WitWorld", (), {})
_imports = _types.ModuleType("wit_world.imports")
_host = _types.ModuleType("wit_world.imports.host")
_host.call = _host_call
_imports.host = _host
_ww.imports = _imports
_sys.modules.update({"wit_world": _ww, "wit_world.imports": _imports, "wit_world.imports.host": _host})

_app = _types.ModuleType("app")
exec(compile(_APP_SOURCE, "app.py", "exec"), _app.__dict__)
_tars_world = _app.WitWorld()

def _tars_handle(input_json):
    try:
        out = {"ok": _tars_world.handle(input_json)}
    except Err as e:
        out = {"err": str(e.value)}
    print("\x1etars-result:" + _json.dumps(out))
"""


def parse_result(stdout: str, stderr: str, exit_code: int, limits: Limits) -> str:
    """The guest's output from the executor's stdout, or the failure it stands for."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            reply = json.loads(line[len(RESULT_MARKER) :])
            if "err" in reply:
                raise GuestFailure(FailureReason.REJECTED, str(reply["err"])[:1024])
            return check_output(str(reply["ok"]), limits)
    if "MemoryError" in stderr:
        raise GuestFailure(FailureReason.MEMORY, "guest exceeded its memory limit", stderr[-4000:])
    raise GuestFailure(FailureReason.ERROR, "guest crashed", f"exit {exit_code}: {stderr[-4000:]}")


class HyperlightInstance(GuestInstance):
    def __init__(self, sandbox: Any, snapshot: Any, limits: Limits) -> None:
        self._sandbox = sandbox
        self._snapshot = snapshot
        self._limits = limits

    def handle(self, input_json: str) -> str:
        self._sandbox.restore(self._snapshot)
        result = self._sandbox.run(f"_tars_handle({input_json!r})")
        return parse_result(result.stdout, result.stderr, result.exit_code, self._limits)


class HyperlightGuest(PreparedGuest):
    def __init__(self, guest: GuestSource, host_call: HostCall, limits: Limits) -> None:
        if guest.app_dir is None:
            raise ValueError("the hyperlight backend runs Python guest apps; this model has no app source")
        self._source = (guest.app_dir / "app.py").read_text()
        self._host_call = host_call
        self._limits = limits

    def _tool(self, name: str, args_json: str) -> str:
        try:
            return json.dumps({"ok": self._host_call(name, args_json)})
        except HostCallRefused as refused:
            return json.dumps({"err": str(refused)})
        except Exception:
            log.exception("host call %s failed", name)
            return json.dumps({"err": f"host capability {name} failed"})

    def instantiate(self) -> HyperlightInstance:
        from hyperlight_sandbox import Sandbox

        heap_mib = max(16, self._limits.memory_bytes // (1024 * 1024))
        sandbox = Sandbox(backend="wasm", heap_size=f"{heap_mib}Mi")
        sandbox.register_tool("tars_host", lambda name, args_json: self._tool(name, args_json))
        setup = sandbox.run(f"_APP_SOURCE = {self._source!r}\n{PRELUDE}")
        if setup.exit_code != 0:
            raise RuntimeError(f"guest app failed to start in Hyperlight: {setup.stderr[-2000:]}")
        return HyperlightInstance(sandbox, sandbox.snapshot(), self._limits)


class HyperlightBackend(SandboxBackend):
    name = "hyperlight"

    def prepare(self, guest: GuestSource, host_call: HostCall, limits: Limits) -> HyperlightGuest:
        return HyperlightGuest(guest, host_call, limits)
