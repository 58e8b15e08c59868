"""Writes tests/models/data/gpt2_reference.json: GPT-2 logits from an independent implementation,
Hugging Face transformers' FlaxGPT2LMHeadModel (JAX), on the synthetic checkpoint that
``tarsctl models make-synthetic`` writes for a fixed preset and seed.

make_synthetic is deterministic for a seed (weights from ``numpy.random.default_rng(seed)``; the
tokenizer is trained on the pydoc topics of the running Python, which only decide the vocabulary
size, here the preset's full 2,048), so tests/models/test_gpt2_reference.py regenerates the same
checkpoint, checks the recorded sha256 of model.safetensors and compares the numpy decoder with
the logits stored here. The token ids are fixed and stored, so the tokenizer plays no part.

transformers refuses a model.safetensors without ``{"format": ...}`` metadata, which
safetensors.numpy.save_file does not write; the script therefore hands transformers a copy with
``{"format": "pt"}`` metadata (same tensors) and loads it with transformers' own PyTorch-name to
Flax conversion (no torch needed for safetensors), then checks that every Flax parameter equals its
tensor in the original file, so nothing was left randomly initialised.

Why Flax and not torch: PyPI's torch wheels for Linux need the CUDA libraries (several GB) to
import, and no CPU-only index is reachable here; jax/jaxlib from PyPI are CPU-only.

Run it in a separate virtual environment (it is not a dependency of the project), from the
repository root:

    python -m venv /tmp/refenv
    /tmp/refenv/bin/pip install "transformers>=4.50,<5" flax jax numpy safetensors tokenizers
    /tmp/refenv/bin/python tests/models/make_gpt2_reference.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PRESET = "edge-tiny"
SEED = 7  # the seed of the edge_tiny_dir fixture in tests/models/conftest.py
TOP_K = 20
IDS_SEED = 2024


def token_sequences(vocab_size: int, eos: int) -> list[list[int]]:
    """Three fixed sequences: a short one, one touching the vocabulary's edges, a longer random one."""
    rng = np.random.default_rng(IDS_SEED)
    short = [int(i) for i in rng.integers(0, vocab_size, 8)]
    edges = [0, vocab_size - 1, eos, 1, vocab_size - 2, 255, 256, eos, 0, vocab_size - 1]
    long = [int(i) for i in rng.integers(0, vocab_size, 48)]
    return [short, edges, long]


def hf_copy(model_dir: Path, out: Path) -> Path:
    """model_dir with format metadata on model.safetensors, which transformers requires."""
    from safetensors.numpy import load_file, save_file

    out.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (out / name).write_bytes((model_dir / name).read_bytes())
    save_file(load_file(model_dir / "model.safetensors"), str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def check_params(params: Any, tensors: dict[str, np.ndarray]) -> None:
    """Every Flax leaf equals its tensor in the file, and there are as many leaves as tensors."""
    from flax.traverse_util import flatten_dict

    leaves = flatten_dict(params)
    assert len(leaves) == len(tensors), (len(leaves), len(tensors))
    for path, leaf in leaves.items():
        assert path[0] == "transformer", path
        name = ".".join(path[1:-1]) + ".weight" if path[-1] in ("kernel", "scale", "embedding") else ""
        name = name or ".".join(path[1:])
        value, expected = np.asarray(leaf), tensors[name]
        if path[-1] == "kernel":
            value = value.T  # FlaxConv1D keeps (out, in) and transposes; the file's Conv1D is (in, out)
        np.testing.assert_array_equal(value, expected, err_msg=name)


def fmt(value: float) -> float:
    return float(f"{value:.8g}")  # a float32 to within 5e-9 relative, in a short JSON number


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "gpt2_reference.json")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(ROOT / "cli"))
    import jax
    import transformers
    from safetensors.numpy import load_file
    from transformers import FlaxGPT2LMHeadModel

    from tarsctl.models import make_synthetic

    jax.config.update("jax_default_matmul_precision", "highest")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_synthetic(Path(tmp) / "ckpt", PRESET, SEED)
        config = json.loads((model_dir / "config.json").read_text())
        sha256 = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
        model = FlaxGPT2LMHeadModel.from_pretrained(str(hf_copy(model_dir, Path(tmp) / "hf")), dtype=np.float32)
        check_params(model.params, load_file(model_dir / "model.safetensors"))
        assert model.config.tie_word_embeddings and model.config.activation_function == "gelu_new"

        sequences = []
        for ids in token_sequences(config["vocab_size"], config["eos_token_id"]):
            logits = np.asarray(model(np.asarray([ids], dtype=np.int32)).logits[0], dtype=np.float32)
            wide = logits.astype(np.float64)
            top = np.argsort(-wide, axis=1, kind="stable")[:, :TOP_K]
            peak = wide.max(axis=1, keepdims=True)
            logsumexp = peak[:, 0] + np.log(np.exp(wide - peak).sum(axis=1))
            sequences.append(
                {
                    "ids": ids,
                    "top_ids": top.tolist(),
                    "top_logits": [[fmt(v) for v in logits[p, top[p]]] for p in range(len(ids))],
                    "logsumexp": [fmt(v) for v in logsumexp],
                    "last_logits": [fmt(v) for v in logits[-1]],
                }
            )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "checkpoint": {
                    "made_by": "tarsctl.models.make_synthetic",
                    "preset": PRESET,
                    "seed": SEED,
                    "vocab_size": config["vocab_size"],
                    "model_safetensors_sha256": sha256,
                },
                "reference": f"transformers {transformers.__version__} FlaxGPT2LMHeadModel "
                f"(jax {jax.__version__}, float32, CPU)",
                "stored": "per sequence: all positions' top-20 ids and logits and logsumexp over the "
                "vocabulary; the full logits of the last position",
                "sequences": sequences,
            },
            separators=(",", ":"),
        )
        + "\n"
    )
    print(f"wrote {args.out} ({len(sequences)} sequences, vocab {config['vocab_size']}, sha256 {sha256[:12]})")


if __name__ == "__main__":
    main()
