"""Echo guest: returns its input; with {"inputs": [...]} (Open Inference Protocol) it returns them as outputs.

{"call": NAME, "args": {...}} calls the host capability NAME and returns {"result": ...} or {"error": ...}.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host


class WitWorld(wit_world.WitWorld):
    def handle(self, input_json: str) -> str:
        request = json.loads(input_json)
        if isinstance(request, dict) and "inputs" in request:
            return json.dumps({"outputs": request["inputs"]})
        if isinstance(request, dict) and "call" in request:
            try:
                result = host.call(request["call"], json.dumps(request.get("args", {})))
            except Err as refused:
                return json.dumps({"error": refused.value})
            return json.dumps({"result": json.loads(result)})
        if isinstance(request, dict) and "fail" in request:
            raise Err(str(request["fail"]))
        return json.dumps(request)
