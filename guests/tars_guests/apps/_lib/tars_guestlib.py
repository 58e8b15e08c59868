"""Helpers shared by the TARS guest apps (runs inside the WebAssembly guest, CPython stdlib only).

Two request shapes reach a guest: the body of ``/v1/functions/{name}:invoke`` as is (a JSON object),
and Open Inference Protocol requests from ``/v2/models/{name}/infer``
(``{"inputs": [{"name", "datatype", "shape", "data"}], "parameters": {...}}``). :func:`read_request`
turns both into one dict of fields; every validation error names the field it is about.
"""

import json

from componentize_py_types import Err
from wit_world.imports import host

MAX_TEXT_CHARS = 10000
MAX_BATCH = 64


class HostError(Exception):
    """A host capability answered with an error (not allowed, bad arguments, failed)."""


def fail(field, problem):
    """Raises the guest error for ``field`` (a dotted path such as ``inputs[0].data``)."""
    raise Err(json.dumps({"error": f"{field}: {problem}", "field": field}))


def read_request(input_json):
    """(fields, is_oip): the request's fields, and whether it came as an inference request."""
    try:
        request = json.loads(input_json)
    except ValueError as exc:
        fail("input", f"is not valid JSON ({exc})")
    if not isinstance(request, dict):
        fail("input", f"must be a JSON object, not {type(request).__name__}")
    if "inputs" in request and isinstance(request["inputs"], list):
        return _fields_from_oip(request), True
    return request, False


def _fields_from_oip(request):
    fields: dict = {}
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        fail("parameters", "must be an object")
    fields.update(parameters)
    for index, tensor in enumerate(request["inputs"]):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            fail(f"inputs[{index}]", "must be a tensor object with a name")
        data = tensor.get("data")
        # A one-element tensor stands for a scalar field (e.g. a prompt); longer ones for a list.
        if isinstance(data, list) and len(data) == 1 and tensor.get("shape") in ([1], [1, 1]):
            data = data[0]
        fields[tensor["name"]] = data
    return fields


def oip_bytes_output(name, values):
    return {"name": name, "datatype": "BYTES", "shape": [len(values)], "data": list(values)}


def oip_fp32_output(name, rows):
    if rows and isinstance(rows[0], list):
        flat = [v for row in rows for v in row]
        return {"name": name, "datatype": "FP32", "shape": [len(rows), len(rows[0])], "data": flat}
    return {"name": name, "datatype": "FP32", "shape": [len(rows)], "data": list(rows)}


def as_function_output(result, is_oip):
    """The guest's JSON answer: as is for invoke, as one BYTES tensor of JSON text for infer."""
    if is_oip:
        return json.dumps({"outputs": [oip_bytes_output("output", [json.dumps(result)])]})
    return json.dumps(result)


def require_text(fields, name, max_chars=MAX_TEXT_CHARS):
    value = fields.get(name)
    if value is None:
        fail(name, "is required")
    return check_text(value, name, max_chars)


def check_text(value, name, max_chars=MAX_TEXT_CHARS):
    if not isinstance(value, str):
        fail(name, f"must be a string, not {type(value).__name__}")
    if not value.strip():
        fail(name, "must not be empty")
    if len(value) > max_chars:
        fail(name, f"is {len(value)} characters long; the limit is {max_chars}")
    return value


def text_list(fields, single, plural, max_items=MAX_BATCH, max_chars=MAX_TEXT_CHARS):
    """(texts, was_list) from ``single`` (one string) or ``plural`` (a list of strings)."""
    if plural in fields and fields[plural] is not None:
        values = fields[plural]
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list):
            fail(plural, f"must be a list of strings, not {type(values).__name__}")
        if not values:
            fail(plural, "must not be empty")
        if len(values) > max_items:
            fail(plural, f"has {len(values)} items; the limit is {max_items}")
        return [check_text(v, f"{plural}[{i}]", max_chars) for i, v in enumerate(values)], True
    if single in fields and isinstance(fields[single], list):
        return text_list({plural: fields[single]}, single, plural, max_items, max_chars)
    return [require_text(fields, single, max_chars)], False


def optional_int(fields, name, default, low, high):
    value = fields.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        fail(name, f"must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        fail(name, f"must be between {low} and {high}, not {value}")
    return value


def optional_number(fields, name, default, low, high):
    value = fields.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(name, f"must be a number, not {type(value).__name__}")
    if not low <= value <= high:
        fail(name, f"must be between {low} and {high}, not {value}")
    return float(value)


def optional_text_list(fields, name, max_items, max_chars):
    value = fields.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        fail(name, f"must be a list of strings, not {type(value).__name__}")
    if len(value) > max_items:
        fail(name, f"has {len(value)} items; the limit is {max_items}")
    return [check_text(v, f"{name}[{i}]", max_chars) for i, v in enumerate(value)]


def optional_stop_list(fields, name, max_items=8, max_chars=64):
    """Stop sequences: non-empty strings, whitespace allowed (a newline is a common stop)."""
    value = fields.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        fail(name, f"must be a list of strings, not {type(value).__name__}")
    if len(value) > max_items:
        fail(name, f"has {len(value)} items; the limit is {max_items}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item or len(item) > max_chars:
            fail(f"{name}[{i}]", f"must be a string of 1 to {max_chars} characters")
    return value


def optional_object(fields, name):
    value = fields.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        fail(name, f"must be an object, not {type(value).__name__}")
    return value


def call(name, **args):
    """Calls host capability ``name``; raises HostError with the host's text when refused."""
    try:
        return json.loads(host.call(name, json.dumps(args)))
    except Err as refused:
        raise HostError(f"{name}: {refused.value}") from None


def try_call(name, trace, **args):
    """Like :func:`call`, but records a refusal in ``trace`` and returns None, so a function can
    still answer (less well) when an optional capability is not allowed or not available."""
    try:
        return call(name, **args)
    except HostError as exc:
        trace.append({"capability": name, "error": str(exc)})
        return None


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5
    return dot / norm if norm else 0.0


def rank_by_meaning(query, candidates, trace):
    """Candidates ordered by cosine similarity to ``query`` (nn.embed), best first, as
    [(score, index)]; None when nn.embed is unavailable, so callers fall back to keywords."""
    reply = try_call("nn.embed", trace, texts=[query, *candidates])
    if reply is None:
        return None
    vectors = reply["embeddings"]
    scored = [(cosine(vectors[0], v), i) for i, v in enumerate(vectors[1:])]
    return sorted(scored, reverse=True)


STOPWORDS = frozenset(
    [
        "the",
        "and",
        "for",
        "but",
        "not",
        "are",
        "was",
        "were",
        "this",
        "that",
        "with",
        "from",
        "into",
        "onto",
        "over",
        "under",
        "then",
        "than",
        "they",
        "them",
        "their",
        "there",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "how",
        "all",
        "any",
        "can",
        "could",
        "should",
        "would",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "has",
        "have",
        "had",
        "does",
        "did",
        "done",
        "its",
        "our",
        "your",
        "you",
        "yours",
        "out",
        "off",
        "too",
        "very",
        "just",
        "also",
        "only",
        "own",
        "same",
        "some",
        "such",
    ]
)


def words(text):
    """Content words of ``text``: lower-cased, punctuation stripped, stopwords and short words dropped."""
    cleaned = (w.strip(".,;:!?()[]\"'").lower() for w in text.split())
    return {w for w in cleaned if len(w) > 2 and w not in STOPWORDS}
