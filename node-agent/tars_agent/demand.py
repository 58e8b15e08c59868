"""What one request asks of its model, for the autoscaler: tokens, for text generation.

A text-generation model is better scaled on the tokens its queued and in-flight requests asked for
than on their count (one request for 4 tokens and one for 4,000 weigh the same as requests); the
agent averages this over time (``Agent.tokens``) and reports it in its Lease for ``metric: tokens``.
"""

from __future__ import annotations

import json
from typing import Any

from tars_api.tarsmodel import ModelKind, TarsModelSpec

# The text-generation guest's default max_tokens (guests/tars_guests/apps/text_generation).
DEFAULT_MAX_TOKENS = 32


def requested_tokens(spec: TarsModelSpec, input_json: str) -> int:
    """Tokens the request may generate: its max_tokens (top level for invoke, in parameters for the
    Open Inference Protocol), capped at the model's spec.maxTokens; 0 for other kinds of model."""
    if spec.kind != ModelKind.TEXT_GENERATION:
        return 0
    try:
        body: Any = json.loads(input_json)
    except ValueError:
        return 0
    if not isinstance(body, dict):
        return 0
    parameters = body.get("parameters")
    wanted = body.get("max_tokens", parameters.get("max_tokens") if isinstance(parameters, dict) else None)
    if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
        wanted = DEFAULT_MAX_TOKENS
    return min(wanted, spec.max_tokens)
