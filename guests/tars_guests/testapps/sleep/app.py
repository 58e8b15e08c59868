"""Latency-bound guest, like Knative's autoscale sample: each request waits inside the host, burning no CPU.

Open Inference Protocol: an optional INT input ``sleep_ms`` (default 100) sets the wait; the answer is
one FP64 output ``slept_ms``. Invoked as a function: ``{"sleep_ms": N}`` -> ``{"slept_ms": N}``. The wait
is the ``clock.sleep`` host capability, so the model must allow it; the agent ends it at the request's
deadline. Ten times the concurrency is then ten times the load, whatever the cores.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host

DEFAULT_SLEEP_MS = 100


def _wanted(request):
    if isinstance(request, dict) and "inputs" in request:
        for tensor in request["inputs"]:
            if tensor.get("name") == "sleep_ms" and tensor.get("data"):
                return tensor["data"][0]
        return DEFAULT_SLEEP_MS
    if isinstance(request, dict):
        return request.get("sleep_ms", DEFAULT_SLEEP_MS)
    return DEFAULT_SLEEP_MS


class WitWorld(wit_world.WitWorld):
    def handle(self, input_json: str) -> str:
        request = json.loads(input_json)
        wanted = _wanted(request)
        if not isinstance(wanted, (int, float)) or isinstance(wanted, bool):
            raise Err("sleep_ms must be a number")
        try:
            slept = json.loads(host.call("clock.sleep", json.dumps({"ms": wanted})))["slept_ms"]
        except Err as refused:
            raise Err(f"clock.sleep: {refused.value}") from None
        if isinstance(request, dict) and "inputs" in request:
            return json.dumps({"outputs": [{"name": "slept_ms", "datatype": "FP64", "shape": [1], "data": [slept]}]})
        return json.dumps({"slept_ms": slept})
