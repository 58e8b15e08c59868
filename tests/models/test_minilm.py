"""all-MiniLM-L6-v2 in numpy against embeddings from an independent implementation.

tests/models/data/minilm_reference.json was written by make_minilm_reference.py with Hugging Face
transformers' FlaxBertModel and its pure-Python BertTokenizer (see that script for how to rerun it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tars_agent.runtimes.minilm import DIMENSIONS, MiniLMEmbedder, ModelFilesMissing

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"


def test_embeddings_match_the_independent_reference(embedder: MiniLMEmbedder) -> None:
    reference = json.loads(REFERENCE.read_text())
    expected = np.asarray(reference["embeddings"], dtype=np.float64)
    got = embedder.embed(reference["sentences"]).astype(np.float64)
    assert got.shape == (len(reference["sentences"]), DIMENSIONS)
    cosines = (got * expected).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    for sentence, cosine in zip(reference["sentences"], cosines, strict=True):
        assert cosine >= 0.999, f"{sentence!r}: cosine {cosine:.6f}"


def test_vectors_are_unit_length_and_independent_of_batching(embedder: MiniLMEmbedder) -> None:
    texts = ["short", "a somewhat longer sentence about clusters and nodes", "mid length text here"]
    together = embedder.embed(texts, batch_size=8)
    alone = np.vstack([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    # Padding in a batch must not change any sentence's vector.
    np.testing.assert_allclose(together, alone, atol=2e-5)


def test_similar_sentences_are_closer_than_unrelated_ones(embedder: MiniLMEmbedder) -> None:
    food, bread, cat = embedder.embed(["A man is eating food.", "A man eats bread.", "The cat sits on the mat."])
    assert float(food @ bread) > float(food @ cat) + 0.2


def test_long_input_is_truncated_to_the_models_window(embedder: MiniLMEmbedder) -> None:
    assert embedder.config.max_seq_length == 256
    vector = embedder.embed(["word " * 2000])
    assert vector.shape == (1, DIMENSIONS) and np.isfinite(vector).all()


def test_empty_batch_and_string_argument() -> None:
    embedder = MiniLMEmbedder()
    assert embedder.embed([]).shape == (0, DIMENSIONS)
    with pytest.raises(TypeError, match="sequence of strings"):
        embedder.embed("not a list")


def test_missing_model_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelFilesMissing, match=r"config\.json"):
        MiniLMEmbedder(tmp_path)
