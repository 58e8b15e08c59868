"""Embedding guest: validates the texts, gets vectors from the host's MiniLM runtime (nn.embed).

invoke: {"text": "..."} -> {"embedding": [384 floats], "dimensions": 384, "model": ...};
        {"texts": [...]} -> {"embeddings": [[...], ...], "dimensions": 384, "model": ...}
infer:  input "text" (BYTES, [n]) -> output "embedding" (FP32, [n, 384])

The guest asks nn.embed for its reply already in the response layout and passes that text on
unparsed: decoding and re-encoding 384 floats per text in the guest's CPython cost more than the
embedding itself (about 10 ms against 9 ms).
"""

import json

import tars_guestlib as lib
import wit_world
from componentize_py_types import Err
from wit_world.imports import host

MAX_TEXTS = 32


class WitWorld(wit_world.WitWorld):
    def handle(self, input_json: str) -> str:
        fields, is_oip = lib.read_request(input_json)
        texts, many = lib.text_list(fields, "text", "texts", max_items=MAX_TEXTS)
        layout = "oip" if is_oip else "batch" if many else "single"
        try:
            return host.call("nn.embed", json.dumps({"texts": texts, "layout": layout}))
        except Err as refused:
            raise Err(json.dumps({"error": f"nn.embed: {refused.value}"})) from None
