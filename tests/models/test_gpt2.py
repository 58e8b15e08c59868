"""The numpy GPT-2 decoder: KV-cache logits against a plain no-cache forward pass, sampling, limits."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tars_agent.runtimes.gpt2 import (
    SYNTHETIC_NOTICE,
    CheckpointError,
    GenerationRequest,
    GPT2Model,
    KVCache,
    first_stop,
)
from tarsctl.models import PRESETS, make_synthetic


def reference_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    """GPT-2 written out the plain way: every position recomputed, attention per head with an
    explicit causal loop, no cache, float64. Shares no code with the runtime."""
    config = json.loads((model_dir / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_file(model_dir / "model.safetensors").items()}
    n_head, d = config["n_head"], config["n_embd"]
    hd = d // n_head

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + config["layer_norm_epsilon"]) * w[name + ".weight"] + w[name + ".bias"]

    def gelu(x: np.ndarray) -> np.ndarray:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    x = w["wte.weight"][ids] + w["wpe.weight"][: len(ids)]
    for layer in range(config["n_layer"]):
        p = f"h.{layer}."
        qkv = norm(x, p + "ln_1") @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]
        out = np.zeros_like(q)
        for h in range(n_head):
            cols = slice(h * hd, (h + 1) * hd)
            for i in range(len(ids)):
                scores = np.array([q[i, cols] @ k[j, cols] / math.sqrt(hd) for j in range(i + 1)])
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                out[i, cols] = weights @ v[: i + 1, cols]
        x = x + out @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        hidden = gelu(norm(x, p + "ln_2") @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
        x = x + hidden @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    return norm(x, "ln_f") @ w["wte.weight"].T


@pytest.fixture(scope="module")
def model(edge_tiny_dir: Path) -> GPT2Model:
    return GPT2Model(edge_tiny_dir)


def test_cached_logits_match_the_no_cache_reference(model: GPT2Model, edge_tiny_dir: Path) -> None:
    ids = model.encode("The operator places models on healthy nodes")
    expected = reference_logits(edge_tiny_dir, ids)
    # Whole prompt at once (the prefill path) ...
    prefill = model.forward(ids, KVCache.empty(model.config), all_logits=True)
    np.testing.assert_allclose(prefill, expected, atol=2e-4, rtol=1e-3)
    # ... and token by token through the cache (the decode path).
    cache = KVCache.empty(model.config)
    for position, token in enumerate(ids):
        np.testing.assert_allclose(model.forward([token], cache), expected[position], atol=2e-4, rtol=1e-3)
    assert cache.length == len(ids)


def test_greedy_is_deterministic_and_says_weights_are_synthetic(model: GPT2Model) -> None:
    first = model.generate(GenerationRequest("Kubernetes", max_tokens=12))
    second = model.generate(GenerationRequest("Kubernetes", max_tokens=12))
    assert first.text == second.text and first.completion_tokens == 12
    assert first.synthetic_weights and SYNTHETIC_NOTICE in first.notices
    assert first.finish_reason == "length"


def test_sampling_is_reproducible_with_a_seed(model: GPT2Model) -> None:
    def sample(seed: int) -> str:
        return model.generate(GenerationRequest("Nodes", max_tokens=16, temperature=1.0, top_k=50, seed=seed)).text

    assert sample(11) == sample(11)
    assert len({sample(s) for s in range(5)}) > 1


def test_top_k_one_equals_greedy(model: GPT2Model) -> None:
    greedy = model.generate(GenerationRequest("Scale", max_tokens=10)).text
    assert model.generate(GenerationRequest("Scale", max_tokens=10, temperature=0.7, top_k=1, seed=3)).text == greedy


def test_stop_sequence_cuts_the_text(model: GPT2Model) -> None:
    free = model.generate(GenerationRequest("Replica", max_tokens=20, temperature=1.0, top_k=40, seed=5)).text
    stop = free[len(free) // 2 : len(free) // 2 + 2]
    assert stop.strip(), f"pick a visible stop sequence from {free!r}"
    stopped = model.generate(
        GenerationRequest("Replica", max_tokens=20, temperature=1.0, top_k=40, seed=5, stop=(stop,))
    )
    assert stopped.finish_reason == "stop"
    assert stopped.text == free[: free.index(stop)]
    assert first_stop("abcXYdefXY", ["d", "XY"]) == 3


def test_max_tokens_is_capped_by_the_limit_and_says_so(model: GPT2Model) -> None:
    result = model.generate(GenerationRequest("Limit", max_tokens=500), token_limit=8)
    assert result.completion_tokens == 8
    assert any("capped at this model's limit of 8" in notice for notice in result.notices)


def test_long_prompt_is_cut_to_the_context_window(model: GPT2Model) -> None:
    result = model.generate(GenerationRequest("node " * 400, max_tokens=4))
    assert result.prompt_tokens == model.config.n_positions - 1
    assert any("context window" in notice for notice in result.notices)
    assert result.finish_reason == "context" and result.completion_tokens == 1


def test_make_synthetic_writes_a_hf_gpt2_checkpoint(tmp_path: Path) -> None:
    first = make_synthetic(tmp_path / "a", "edge-tiny", seed=3)
    second = make_synthetic(tmp_path / "b", "edge-tiny", seed=3)
    config = json.loads((first / "config.json").read_text())
    assert config["tars_synthetic"] is True and config["model_type"] == "gpt2"
    weights = load_file(first / "model.safetensors")
    assert {"wte.weight", "wpe.weight", "ln_f.weight", "h.0.attn.c_attn.weight", "h.1.mlp.c_proj.bias"} <= set(weights)
    assert weights["h.0.attn.c_attn.weight"].shape == (PRESETS["edge-tiny"].n_embd, 3 * PRESETS["edge-tiny"].n_embd)
    np.testing.assert_array_equal(weights["wte.weight"], load_file(second / "model.safetensors")["wte.weight"])
    model = GPT2Model(first)
    text = "Self-healing nodes restart."
    assert model.decode(model.encode(text)) == text


def test_bad_checkpoints_are_rejected(tmp_path: Path, edge_tiny_dir: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json"):
        GPT2Model(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(edge_tiny_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(config | {"n_layer": 3}))
    with pytest.raises(CheckpointError, match="lacks"):
        GPT2Model(broken)


def test_make_synthetic_command(tmp_path: Path) -> None:
    import argparse

    from tarsctl import models as models_command

    parser = argparse.ArgumentParser(prog="tarsctl")
    models_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["models", "make-synthetic", str(tmp_path / "ckpt"), "--seed", "4"])
    assert args.func(args) == 0
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["tars_seed"] == 4
    assert GPT2Model(tmp_path / "ckpt").generate(GenerationRequest("x", max_tokens=2)).synthetic_weights


def test_matrices_split_between_two_threads_give_the_same_product() -> None:
    from tars_agent.runtimes.gpt2 import _SplitMatmul

    rng = np.random.default_rng(3)
    split = _SplitMatmul(helpers=1)
    for rows, columns in ((1, 2304), (5, 768), (1, 300)):
        x = rng.standard_normal((rows, 768), dtype=np.float32)
        w = rng.standard_normal((768, columns), dtype=np.float32)
        got = split(x, w)
        assert got.shape == (rows, columns)
        np.testing.assert_allclose(got, x @ w, rtol=1e-5, atol=1e-4)
