"""The numpy GPT-2 decoder against Hugging Face transformers' GPT-2 on the same tiny checkpoint.

tests/models/data/gpt2_reference.json was written by make_gpt2_reference.py with transformers'
FlaxGPT2LMHeadModel on the checkpoint ``make_synthetic`` writes for the recorded preset and seed
(see that script for how to rerun it). The test regenerates that checkpoint, checks that its
model.safetensors is byte-identical to the one the reference was computed on, and compares logits.

Tolerance: 1e-5 times the largest reference logit magnitude (about 1 here). Both sides compute in
float32; the largest difference observed was 7.2e-7, so this leaves about 14x headroom for other
BLAS builds and summation orders. It is tight on purpose: swapping the tanh GELU for the exact one
moves the logits by 4.5e-5, which a 1e-4 tolerance would let through.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tars_agent.runtimes.gpt2 import GPT2Model, KVCache
from tarsctl.models import make_synthetic

REFERENCE = Path(__file__).parent / "data" / "gpt2_reference.json"
RELATIVE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(REFERENCE.read_text())
    return data


@pytest.fixture(scope="module")
def model(reference: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> GPT2Model:
    checkpoint = reference["checkpoint"]
    model_dir = make_synthetic(tmp_path_factory.mktemp("gpt2-reference"), checkpoint["preset"], checkpoint["seed"])
    digest = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    # Otherwise the comparison below would be between two different models.
    assert digest == checkpoint["model_safetensors_sha256"], "make_synthetic no longer writes the recorded weights"
    loaded = GPT2Model(model_dir)
    assert loaded.config.vocab_size == checkpoint["vocab_size"]
    return loaded


def full_forward(model: GPT2Model, ids: list[int]) -> np.ndarray:
    return model.forward(ids, KVCache.empty(model.config), all_logits=True)


def token_by_token(model: GPT2Model, ids: list[int]) -> np.ndarray:
    cache = KVCache.empty(model.config)
    return np.stack([model.forward([token], cache) for token in ids])


def in_chunks_of_three(model: GPT2Model, ids: list[int]) -> np.ndarray:
    # Several tokens at a time after a non-empty cache: the causal mask with an offset.
    cache = KVCache.empty(model.config)
    return np.vstack([model.forward(ids[i : i + 3], cache, all_logits=True) for i in range(0, len(ids), 3)])


PATHS: dict[str, Callable[[GPT2Model, list[int]], np.ndarray]] = {
    "full": full_forward,
    "cached": token_by_token,
    "chunked": in_chunks_of_three,
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_logits_match_transformers_gpt2(model: GPT2Model, reference: dict[str, Any], path: str) -> None:
    for sequence in reference["sequences"]:
        ids = sequence["ids"]
        got = PATHS[path](model, ids).astype(np.float64)
        assert got.shape == (len(ids), model.config.vocab_size)
        top_ids = np.asarray(sequence["top_ids"])
        top_logits = np.asarray(sequence["top_logits"], dtype=np.float64)
        last = np.asarray(sequence["last_logits"], dtype=np.float64)
        tolerance = RELATIVE_TOLERANCE * max(1.0, float(np.abs(top_logits).max()), float(np.abs(last).max()))

        # Every position: the reference's 20 highest logits, and logsumexp over the whole vocabulary.
        np.testing.assert_allclose(np.take_along_axis(got, top_ids, axis=1), top_logits, rtol=0, atol=tolerance)
        peak = got.max(axis=1, keepdims=True)
        logsumexp = peak[:, 0] + np.log(np.exp(got - peak).sum(axis=1))
        np.testing.assert_allclose(logsumexp, sequence["logsumexp"], rtol=0, atol=tolerance)
        # The last position: the whole vocabulary.
        np.testing.assert_allclose(got[-1], last, rtol=0, atol=tolerance)
        # Greedy decoding picks the same token wherever the reference's top two are not a near tie.
        clear = top_logits[:, 0] - top_logits[:, 1] > 2 * tolerance
        assert (got.argmax(axis=1)[clear] == top_ids[clear, 0]).all()
