"""Text-generation guest: validates the prompt and sampling parameters, generates with nn.generate.

invoke: {"prompt": "...", "max_tokens": 32, "temperature": 0.0, "top_k": 0, "seed": 1, "stop": ["\n"]}
        -> {"text", "finish_reason", "prompt_tokens", "completion_tokens", "synthetic_weights", "notices"}
infer:  input "prompt" (BYTES, [1]), the rest as parameters -> output "text" (BYTES, [1]); the other
        fields come back as response parameters.
The host caps max_tokens at the TarsModel's spec.maxTokens and says so in "notices"; weights made by
``tarsctl models make-synthetic`` are reported with synthetic_weights true and a notice.
"""

import json

import tars_guestlib as lib
import wit_world
from componentize_py_types import Err

MAX_PROMPT_CHARS = 8000


class WitWorld(wit_world.WitWorld):
    def handle(self, input_json: str) -> str:
        fields, is_oip = lib.read_request(input_json)
        prompt = lib.require_text(fields, "prompt", MAX_PROMPT_CHARS)
        args = {
            "prompt": prompt,
            "max_tokens": lib.optional_int(fields, "max_tokens", 32, 1, 4096),
            "temperature": lib.optional_number(fields, "temperature", 0.0, 0.0, 5.0),
            "top_k": lib.optional_int(fields, "top_k", 0, 0, 100000),
            "stop": lib.optional_stop_list(fields, "stop"),
        }
        seed = fields.get("seed")
        if seed is not None:
            args["seed"] = lib.optional_int(fields, "seed", 0, 0, 2**32 - 1)
        try:
            reply = lib.call("nn.generate", **args)
        except lib.HostError as exc:
            raise Err(json.dumps({"error": str(exc)})) from None
        if is_oip:
            rest = {k: v for k, v in reply.items() if k != "text"}
            return json.dumps({"outputs": [lib.oip_bytes_output("text", [reply["text"]])], "parameters": rest})
        return json.dumps(reply)
