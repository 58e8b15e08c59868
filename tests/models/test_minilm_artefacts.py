"""MiniLM's optimized onnxruntime encoder: built once per node or with the image, then only mapped.

A fresh process with an image's prebuilt directory and an empty cache must embed like the reference
without writing anything; without one, the first load builds into the cache and later loads reuse it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tars_agent.prebuild import prebuild_models
from tars_agent.runtimes.minilm import BertConfig, MiniLMEmbedder, encoder_artefact, packaged_model_dir
from tars_agent.runtimes.ort_models import MODEL_FILE

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"

CHILD = """
import json, sys, time
from tars_agent.runtimes.minilm import MiniLMEmbedder
reference = json.loads(open(sys.argv[1]).read())
embedder = MiniLMEmbedder()
print(json.dumps(embedder.embed(reference["sentences"]).tolist()))
"""


def _cosines(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return (got * expected).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))


@pytest.fixture(scope="module")
def prebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prebuilt")
    manifest = prebuild_models(out / "models")
    entry = manifest["all-minilm-l6-v2"]
    assert isinstance(entry, dict)
    assert (out / entry["model"]).is_file() and entry["bytes"] > 80_000_000  # weights, prepacked
    return out


def test_a_fresh_node_with_the_image_models_builds_nothing(prebuilt: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {**os.environ, "TARS_PREBUILT_DIR": str(prebuilt), "TARS_CACHE_DIR": str(cache)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(REFERENCE)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    reference = json.loads(REFERENCE.read_text())
    cosines = _cosines(np.asarray(json.loads(done.stdout)), np.asarray(reference["embeddings"]))
    assert cosines.min() >= 0.999, cosines
    assert not (cache / "models").exists(), list(cache.rglob("*"))


def test_the_first_load_builds_into_the_cache_and_later_ones_reuse_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TARS_PREBUILT_DIR", raising=False)
    monkeypatch.setenv("TARS_CACHE_DIR", str(tmp_path))
    first = MiniLMEmbedder()
    [built] = (tmp_path / "models").glob(f"*/{MODEL_FILE}")
    stamp = built.stat().st_mtime_ns
    second = MiniLMEmbedder()
    assert built.stat().st_mtime_ns == stamp and len(list((tmp_path / "models").iterdir())) == 1
    texts = ["The cat sits outside on the mat.", "A man is playing guitar."]
    np.testing.assert_allclose(first.embed(texts), second.embed(texts), atol=1e-6)


def test_other_weights_get_another_key(tmp_path: Path) -> None:
    packaged = packaged_model_dir()
    config = BertConfig.from_dir(packaged)
    copy = tmp_path / "model"
    shutil.copytree(packaged, copy)
    same, _ = encoder_artefact(copy, config, packaged=False)
    with open(copy / "model.safetensors", "r+b") as weights:
        weights.seek(-4, os.SEEK_END)
        weights.write(b"\x00\x00\x80\x3f")  # the last float becomes 1.0
    changed, _ = encoder_artefact(copy, config, packaged=False)
    assert same != changed
    assert encoder_artefact(packaged, config, packaged=True)[0] not in (same, changed)
