"""onnxruntime sessions that open in milliseconds: optimized once, weights prepacked and mapped.

An ONNX graph built from a checkpoint (see :mod:`tars_agent.runtimes.bert_onnx`) is optimized by
onnxruntime once and saved with its weights in an external file, already in the packed layout its
matrix kernels use. Later sessions map that file instead of parsing, copying and repacking ~90 MB
(2 s against 40 ms of CPU here). The saved form is only valid for the same onnxruntime build and
CPU features, so both are part of its key.

Lookup order: ``$TARS_PREBUILT_DIR/models/<key>`` (read-only, made with the image by
``tars_agent.prebuild``), then ``$TARS_CACHE_DIR/models/<key>`` (default ``~/.cache/tars``),
else built now into the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime as ort

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "model.data"
# Bump when the graphs built here change in a way the key's identity does not show.
FORMAT = "1"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def artefact_key(identity: str) -> str:
    """Key of the optimized form of the model named by ``identity`` on this runtime and CPU."""
    digest = hashlib.sha256(f"{identity}\nonnxruntime {ort.__version__}\nformat {FORMAT}\n".encode())
    digest.update(_cpu_flags().encode())
    return digest.hexdigest()[:32]


def _options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    # Requests are small; parallelism comes from serving them concurrently (run() drops the GIL),
    # and spinning pool threads would steal the core another request is using.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def write_optimized(model: onnx.ModelProto, out: Path) -> Path:
    """Optimizes ``model`` with onnxruntime and saves it into the directory ``out`` (made here)."""
    out.mkdir(parents=True)
    options = _options()
    # EXTENDED, not ALL: ALL adds layout changes for the exact machine, which the key already pins,
    # but they are not worth their load time for these small matrices.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out / MODEL_FILE)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", WEIGHTS_FILE)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return out / MODEL_FILE


def cache_root() -> Path:
    root = os.environ.get("TARS_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "tars") / "models"


def prebuilt_root() -> Path | None:
    root = os.environ.get("TARS_PREBUILT_DIR")
    return Path(root) / "models" if root else None


def optimized_model(key: str, build: Callable[[], onnx.ModelProto]) -> Path:
    """The saved optimized model for ``key``: the image's, the cache's, or built now into the cache."""
    prebuilt = prebuilt_root()
    for root in (prebuilt, cache_root()):
        if root is not None and (root / key / MODEL_FILE).is_file():
            return root / key / MODEL_FILE
    target = cache_root() / key
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("optimizing %s for onnxruntime %s into %s (once per node)", key, ort.__version__, target)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        write_optimized(build(), staging / "model")
        try:
            os.rename(staging / "model", target)
        except OSError:
            if not (target / MODEL_FILE).is_file():  # not another process winning the same race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / MODEL_FILE


def open_session(path: Path) -> ort.InferenceSession:
    """A session on a model saved by :func:`write_optimized`: no optimizing, weights mapped."""
    options = _options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
