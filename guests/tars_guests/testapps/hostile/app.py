"""A guest that misbehaves on request, for the agent's isolation tests.

Input {"do": ACTION, ...}. Attempts that the sandbox must refuse are caught here and reported as
{"blocked": true, "error": "..."} so a test can tell "refused" from "never tried"; attempts that the
host must stop (loops, floods, allocation) never return.
"""

import json
import select
import socket
import time

import wit_world
from componentize_py_types import Err
from wit_world.imports import host

# Module state survives only inside one instance: the next request must see 0 again.
CALLS = 0
HOARD: list[bytearray] = []


def _attempt(action):
    try:
        value = action()
    except Exception as exc:  # the sandbox refused: report what the guest saw
        return {"blocked": True, "error": f"{type(exc).__name__}: {exc}"}
    return {"blocked": False, "value": value}


def _read_file(path):
    with open(path) as f:
        return f.read(200)


def _write_file(path):
    with open(path, "w") as f:
        f.write("left behind")
    return path


def _connect(host_name, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect((host_name, port))
    return "connected"


def _allocate(mib):
    # Keep every chunk so the guest's linear memory has to grow past the limit.
    for _ in range(mib):
        HOARD.append(bytearray(1024 * 1024))
    return len(HOARD)


def _wait(how, seconds):
    # Both end in a blocking WASI poll: a sleep blocks on one clock pollable, select on a poll list.
    started = time.monotonic()
    if how == "sleep":
        time.sleep(seconds)
    else:
        select.select([], [], [], seconds)
    return time.monotonic() - started


def _loop():
    n = 0
    while True:
        n += 1


class WitWorld(wit_world.WitWorld):
    def handle(self, input_json: str) -> str:
        global CALLS
        CALLS += 1
        req = json.loads(input_json)
        do = req.get("do")
        if do == "state":
            return json.dumps({"calls": CALLS})
        if do == "read_file":
            return json.dumps(_attempt(lambda: _read_file(req.get("path", "/etc/passwd"))))
        if do == "write_file":
            return json.dumps(_attempt(lambda: _write_file(req.get("path", "/tmp/tars-guest-was-here"))))
        if do == "socket":
            return json.dumps(_attempt(lambda: _connect(req.get("host", "127.0.0.1"), req.get("port", 80))))
        if do == "env":
            import os

            return json.dumps({"env": dict(os.environ)})
        if do == "allocate":
            return json.dumps({"chunks": _allocate(int(req.get("mib", 1024)))})
        if do == "loop":
            _loop()
        if do in ("sleep", "poll"):
            return json.dumps({"waited_s": _wait(do, float(req.get("seconds", 600)))})
        if do == "sleep_forever":
            while True:
                time.sleep(1)
        if do == "flood":
            return json.dumps({"data": "x" * int(req.get("bytes", 10_000_000))})
        if do == "print_flood":
            chunk = "y" * 65536
            for _ in range(int(req.get("chunks", 1000))):
                print(chunk)
            return json.dumps({"printed": True})
        if do == "call":
            try:
                return json.dumps({"result": json.loads(host.call(req["name"], json.dumps(req.get("args", {}))))})
            except Err as refused:
                return json.dumps({"blocked": True, "error": refused.value})
        if do == "crash":
            raise RuntimeError("guest bug")
        if do == "bad_json":
            return "not json {"
        raise Err(f"unknown action: {do}")
