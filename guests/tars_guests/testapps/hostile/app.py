"""A guest that misbehaves on request, for the agent's isolation tests.

Input {"do": ACTION, ...}. Attempts that the sandbox must refuse are caught here and reported as
{"blocked": true, "error": "..."} so a test can tell "refused" from "never tried"; attempts that the
host must stop (loops, floods, allocation) never return.
"""

import json
import os
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


def _call(req):
    try:
        return {"result": json.loads(host.call(req["name"], json.dumps(req.get("args", {}))))}
    except Err as refused:
        return {"blocked": True, "error": refused.value}


def _sleep_forever(_req):
    while True:
        time.sleep(1)


def _print_flood(req):
    chunk = "y" * 65536
    for _ in range(int(req.get("chunks", 1000))):
        print(chunk)
    return {"printed": True}


def _crash(_req):
    raise RuntimeError("guest bug")


# Each action takes the request and returns a JSON value (or, for bad_json, the raw text to answer).
ACTIONS = {
    "state": lambda _req: {"calls": CALLS},
    "read_file": lambda req: _attempt(lambda: _read_file(req.get("path", "/etc/passwd"))),
    "write_file": lambda req: _attempt(lambda: _write_file(req.get("path", "/tmp/tars-guest-was-here"))),
    "socket": lambda req: _attempt(lambda: _connect(req.get("host", "127.0.0.1"), req.get("port", 80))),
    "env": lambda _req: {"env": dict(os.environ)},
    "allocate": lambda req: {"chunks": _allocate(int(req.get("mib", 1024)))},
    "loop": lambda _req: _loop(),
    "sleep": lambda req: {"waited_s": _wait("sleep", float(req.get("seconds", 600)))},
    "poll": lambda req: {"waited_s": _wait("poll", float(req.get("seconds", 600)))},
    "sleep_forever": _sleep_forever,
    "flood": lambda req: {"data": "x" * int(req.get("bytes", 10_000_000))},
    "print_flood": _print_flood,
    "call": _call,
    "crash": _crash,
    "bad_json": lambda _req: "not json {",
}


class WitWorld(wit_world.WitWorld):
    def handle(self, input_json: str) -> str:
        global CALLS
        CALLS += 1
        req = json.loads(input_json)
        action = ACTIONS.get(req.get("do"))
        if action is None:
            raise Err(f"unknown action: {req.get('do')}")
        result = action(req)
        return result if isinstance(result, str) else json.dumps(result)
