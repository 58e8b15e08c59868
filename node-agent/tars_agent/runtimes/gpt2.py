"""A GPT-2-architecture decoder in numpy with a KV cache, greedy and seeded top-k sampling.

Loads any GPT-2-format directory: ``config.json`` (Hugging Face GPT-2 keys), ``model.safetensors``
(Hugging Face GPT-2 tensor names: ``wte.weight``, ``wpe.weight``, ``h.N.attn.c_attn.weight``, ...,
``ln_f.weight``; an optional ``transformer.`` prefix is accepted) and ``tokenizer.json``. Weights
are never fetched from a hub. Checkpoints whose config says ``"tars_synthetic": true`` (made by
``tarsctl models make-synthetic``) are randomly initialised, and every generation says so.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from tars_agent.runtimes.gpt2_int8 import Int8Blocks
from tars_agent.runtimes.int8_matmul import Int8Matmul
from tars_agent.runtimes.numerics import gelu_exact, gelu_tanh, layer_norm, limit_blas_threads, softmax

SYNTHETIC_KEY = "tars_synthetic"
SYNTHETIC_NOTICE = "weights are synthetic (randomly initialised): the text is not meaningful"
DEFAULT_TOKEN_LIMIT = 256
MAX_STOP_SEQUENCES = 8
_ACTIVATIONS = {"gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh, "gelu": gelu_exact}


class _SplitMatmul:
    """``x @ w`` with ``w``'s columns split between the calling thread and an idle helper thread.

    One generated token reads every weight once (340 MB for GPT-2 small) for little arithmetic, so a
    token's time is one core's memory bandwidth; numpy and onnxruntime drop the GIL while they
    multiply, so a second thread reading the other half of each matrix uses a second core's. Column
    halves leave every output element's sum as it was. When the helper is busy (other streams), the
    caller does both halves.
    """

    def __init__(self, helpers: int) -> None:
        self._pool = ThreadPoolExecutor(helpers, thread_name_prefix="gpt2-matmul") if helpers else None
        self._idle = threading.Semaphore(helpers)

    def __call__(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        half = w.shape[1] // 2
        if half < 256 or not self._helper_free():
            return x @ w
        return self._with_helper(partial(np.matmul, x, w[:, :half]), partial(np.matmul, x, w[:, half:]))

    def halves(self, left: Callable[[], np.ndarray], right: Callable[[], np.ndarray]) -> np.ndarray:
        """``[left(), right()]`` side by side, ``right`` on the helper when it is free."""
        if not self._helper_free():
            return np.concatenate([left(), right()], axis=-1)
        return self._with_helper(left, right)

    def _helper_free(self) -> bool:
        return self._pool is not None and self._idle.acquire(blocking=False)

    def _with_helper(self, left: Callable[[], np.ndarray], right: Callable[[], np.ndarray]) -> np.ndarray:
        assert self._pool is not None
        try:
            other = self._pool.submit(right)
            return np.concatenate([left(), other.result()], axis=-1)
        finally:
            self._idle.release()


_SPLIT = _SplitMatmul(helpers=min(1, (os.cpu_count() or 1) - 1))


def _int8_halves(w: np.ndarray) -> tuple[Int8Matmul, Int8Matmul]:
    half = w.shape[1] // 2
    return Int8Matmul(w[:, :half]), Int8Matmul(w[:, half:])


class CheckpointError(ValueError):
    """The directory is not a usable GPT-2-format checkpoint."""


@dataclass(frozen=True)
class GPT2Config:
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    eos_token_id: int | None = None
    synthetic: bool = False

    @staticmethod
    def from_file(path: Path) -> GPT2Config:
        raw = json.loads(path.read_text())
        if raw.get("model_type", "gpt2") != "gpt2":
            raise CheckpointError(f"{path}: model_type {raw.get('model_type')!r} is not gpt2")
        activation = raw.get("activation_function", "gelu_new")
        if activation not in _ACTIVATIONS:
            raise CheckpointError(f"{path}: activation_function {activation!r} is not supported")
        config = GPT2Config(
            vocab_size=int(raw["vocab_size"]),
            n_positions=int(raw.get("n_positions", raw.get("n_ctx", 1024))),
            n_embd=int(raw["n_embd"]),
            n_layer=int(raw["n_layer"]),
            n_head=int(raw["n_head"]),
            layer_norm_epsilon=float(raw.get("layer_norm_epsilon", 1e-5)),
            activation_function=activation,
            eos_token_id=raw.get("eos_token_id"),
            synthetic=bool(raw.get(SYNTHETIC_KEY, False)),
        )
        if config.n_embd % config.n_head:
            raise CheckpointError(f"{path}: n_embd {config.n_embd} is not a multiple of n_head {config.n_head}")
        return config

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass
class KVCache:
    """Keys and values of every position seen so far, per layer: (heads, n_positions, head_dim), or
    (n_positions, heads, head_dim) with ``positions_first`` (the int8 graph's: a prefix is contiguous)."""

    keys: list[np.ndarray]
    values: list[np.ndarray]
    length: int = 0
    positions_first: bool = False

    @staticmethod
    def empty(config: GPT2Config, positions_first: bool = False) -> KVCache:
        shape = (config.n_head, config.n_positions, config.head_dim)
        if positions_first:
            shape = (config.n_positions, config.n_head, config.head_dim)
        return KVCache(
            keys=[np.zeros(shape, np.float32) for _ in range(config.n_layer)],
            values=[np.zeros(shape, np.float32) for _ in range(config.n_layer)],
            positions_first=positions_first,
        )


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    # "stop" (a stop sequence), "eos" (end-of-text token), "length" (max_tokens), "context" (window full)
    finish_reason: str
    synthetic_weights: bool
    notices: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
            "synthetic_weights": self.synthetic_weights,
            "notices": list(self.notices),
        }


def _strip_prefix(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # GPT2LMHeadModel checkpoints may carry "transformer."; the lm_head is tied to wte either way.
    out: dict[str, np.ndarray] = {}
    for name, value in weights.items():
        short = name.removeprefix("transformer.")
        if short.startswith("lm_head") or short.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # tied head / causal-mask buffers of old checkpoints: recomputed here
        out[short] = np.ascontiguousarray(value.astype(np.float32, copy=False))
    return out


def _required_names(config: GPT2Config) -> list[str]:
    names = ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"]
    for layer in range(config.n_layer):
        for part in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            names += [f"h.{layer}.{part}.weight", f"h.{layer}.{part}.bias"]
    return names


PRECISIONS = ("float32", "int8")
_HEAD = "lm_head"


class GPT2Model:
    """A loaded checkpoint; read-only after loading, so one instance serves concurrent requests.

    ``precision="int8"`` (opt-in) keeps the blocks' matrices and the output head in 7-bit integers
    (:mod:`tars_agent.runtimes.int8_matmul`), the blocks as one onnxruntime graph
    (:mod:`tars_agent.runtimes.gpt2_int8`): a token reads a quarter of the bytes, and its logits move
    by about 1 % of their range, so greedy text can part from float32's where two tokens are close.
    float32 stays the default: it matches transformers to 1e-5.
    """

    def __init__(self, model_dir: Path, precision: str = "float32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
        model_dir = Path(model_dir)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (model_dir / name).is_file():
                raise CheckpointError(f"{model_dir} has no {name}")
        limit_blas_threads(1)
        self.model_dir = model_dir
        self.config = GPT2Config.from_file(model_dir / "config.json")
        self.weights = _strip_prefix(load_file(model_dir / "model.safetensors"))
        missing = [n for n in _required_names(self.config) if n not in self.weights]
        if missing:
            raise CheckpointError(f"{model_dir}/model.safetensors lacks {len(missing)} tensors, e.g. {missing[:3]}")
        expected = (self.config.vocab_size, self.config.n_embd)
        if self.weights["wte.weight"].shape != expected:
            raise CheckpointError(f"wte.weight has shape {self.weights['wte.weight'].shape}, config says {expected}")
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self._tokenizer_lock = threading.Lock()
        self._activation = _ACTIVATIONS[self.config.activation_function]
        self.eos_token_id = self._find_eos()
        self.precision = precision
        self._parameters = sum(int(w.size) for w in self.weights.values())
        # The int8 output head in column halves, for _SPLIT: per-column scales make them exactly the
        # whole matrix's columns. wte itself stays for the lookup.
        self._head: tuple[Int8Matmul, Int8Matmul] | None = None
        self._blocks: Int8Blocks | None = None
        if precision == "int8":
            self._head = _int8_halves(self.weights["wte.weight"].T)
            cfg = self.config
            self._blocks = Int8Blocks(
                self.weights, cfg.n_layer, cfg.n_head, cfg.layer_norm_epsilon, cfg.activation_function
            )

    def _find_eos(self) -> int | None:
        if self.config.eos_token_id is not None and self.config.eos_token_id < self.config.vocab_size:
            return int(self.config.eos_token_id)
        token = self.tokenizer.token_to_id("<|endoftext|>")
        return int(token) if token is not None else None

    def parameter_count(self) -> int:
        return self._parameters

    def quantized_bytes(self) -> int:
        """Bytes of the int8 matrices and their scales (0 for float32)."""
        head = sum(half.nbytes for half in self._head) if self._head else 0
        return head + (self._blocks.nbytes if self._blocks else 0)

    def new_cache(self) -> KVCache:
        return KVCache.empty(self.config, positions_first=self._blocks is not None)

    def _matmul(self, x: np.ndarray, name: str) -> np.ndarray:
        if name == _HEAD and self._head is not None:
            left, right = self._head
            return _SPLIT.halves(partial(left, x), partial(right, x))
        return _SPLIT(x, self.weights["wte.weight"].T if name == _HEAD else self.weights[name])

    def encode(self, text: str) -> list[int]:
        with self._tokenizer_lock:
            return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        with self._tokenizer_lock:
            return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def forward(self, token_ids: Sequence[int], cache: KVCache, all_logits: bool = False) -> np.ndarray:
        """Appends ``token_ids`` to the cache; logits of the last position (vocab,) or all (n, vocab)."""
        cfg = self.config
        w = self.weights
        start, count = cache.length, len(token_ids)
        if count == 0:
            raise ValueError("forward() needs at least one token")
        if start + count > cfg.n_positions:
            raise ValueError(f"{start + count} positions exceed the context window of {cfg.n_positions}")
        ids = np.asarray(token_ids, dtype=np.int64)
        x = w["wte.weight"][ids] + w["wpe.weight"][start : start + count]
        # Query i sits at absolute position start+i and may attend to keys 0..start+i.
        causal = np.arange(start + count)[None, :] > (start + np.arange(count))[:, None]
        mask = np.where(causal, np.float32(-1e9), np.float32(0.0))
        if self._blocks is not None:
            x = self._int8_blocks(x, cache, start, mask)
        else:
            for layer in range(cfg.n_layer):
                x = self._block(x, layer, cache, start, mask)
            x = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], cfg.layer_norm_epsilon)
        cache.length = start + count
        logits = self._matmul(x if all_logits else x[-1:], _HEAD)  # GPT-2 ties the head to the embeddings
        return logits if all_logits else logits[0]

    def _int8_blocks(self, x: np.ndarray, cache: KVCache, start: int, mask: np.ndarray) -> np.ndarray:
        """Every block and the final layer norm in one call; the new keys and values go into ``cache``."""
        assert self._blocks is not None
        if not cache.positions_first:
            raise ValueError("an int8 model's cache comes from its new_cache()")
        end = start + x.shape[0]
        hidden, keys, values = self._blocks(x, mask, [k[:start] for k in cache.keys], [v[:start] for v in cache.values])
        for layer in range(self.config.n_layer):
            cache.keys[layer][start:end] = keys[layer]
            cache.values[layer][start:end] = values[layer]
        return hidden

    def _block(self, x: np.ndarray, layer: int, cache: KVCache, start: int, mask: np.ndarray) -> np.ndarray:
        cfg = self.config
        w = self.weights
        p = f"h.{layer}."
        count, heads, head_dim = x.shape[0], cfg.n_head, cfg.head_dim
        h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], cfg.layer_norm_epsilon)
        # HF GPT-2 uses Conv1D: weights are already (in, out).
        qkv = self._matmul(h, p + "attn.c_attn.weight") + w[p + "attn.c_attn.bias"]
        q, k, v = (t.reshape(count, heads, head_dim).transpose(1, 0, 2) for t in np.split(qkv, 3, axis=-1))
        end = start + count
        cache.keys[layer][:, start:end] = k
        cache.values[layer][:, start:end] = v
        keys, values = cache.keys[layer][:, :end], cache.values[layer][:, :end]
        scores = q @ keys.transpose(0, 2, 1) / np.float32(np.sqrt(head_dim)) + mask
        context = (softmax(scores) @ values).transpose(1, 0, 2).reshape(count, cfg.n_embd)
        x = x + self._matmul(context, p + "attn.c_proj.weight") + w[p + "attn.c_proj.bias"]
        h = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], cfg.layer_norm_epsilon)
        inner = self._activation(self._matmul(h, p + "mlp.c_fc.weight") + w[p + "mlp.c_fc.bias"])
        return x + self._matmul(inner, p + "mlp.c_proj.weight") + w[p + "mlp.c_proj.bias"]

    def generate(self, request: GenerationRequest, token_limit: int = DEFAULT_TOKEN_LIMIT) -> GenerationResult:
        """Generates up to ``min(request.max_tokens, token_limit)`` tokens after the prompt."""
        notices: list[str] = []
        if self.config.synthetic:
            notices.append(SYNTHETIC_NOTICE)
        max_tokens = request.max_tokens
        if max_tokens > token_limit:
            notices.append(f"max_tokens {max_tokens} capped at this model's limit of {token_limit}")
            max_tokens = token_limit
        prompt_ids = self.encode(request.prompt)
        window = self.config.n_positions
        if len(prompt_ids) >= window:
            # Keep the end of the prompt: it is what the continuation follows from.
            notices.append(f"prompt of {len(prompt_ids)} tokens cut to its last {window - 1} (context window)")
            prompt_ids = prompt_ids[-(window - 1) :]
        if not prompt_ids:
            prompt_ids = [self.eos_token_id] if self.eos_token_id is not None else [0]
        rng = np.random.default_rng(request.seed)
        cache = self.new_cache()
        logits = self.forward(prompt_ids, cache)
        generated: list[int] = []
        text = ""
        finish = "length"
        while len(generated) < max_tokens:
            if cache.length >= window:
                finish = "context"
                notices.append(f"stopped at the context window of {window} tokens")
                break
            token = pick_token(logits, request.temperature, request.top_k, rng)
            if token == self.eos_token_id:
                finish = "eos"
                break
            generated.append(token)
            text = self.decode(generated)
            cut = first_stop(text, request.stop)
            if cut is not None:
                text, finish = text[:cut], "stop"
                break
            if len(generated) < max_tokens and cache.length < window:
                logits = self.forward([token], cache)
        return GenerationResult(
            text=text,
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(generated),
            finish_reason=finish,
            synthetic_weights=self.config.synthetic,
            notices=notices,
        )


def pick_token(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
    """Greedy when temperature is 0; else samples from softmax(logits / T) over the top_k (0: all)."""
    if temperature <= 0.0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    if 0 < top_k < scaled.shape[0]:
        # argpartition keeps the k largest without sorting the whole vocabulary.
        keep = np.argpartition(scaled, -top_k)[-top_k:]
        probabilities = softmax(scaled[keep])
        return int(keep[rng.choice(top_k, p=probabilities)])
    return int(rng.choice(scaled.shape[0], p=softmax(scaled)))


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the earliest stop sequence starts in ``text``, or None."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None
