"""Numeric building blocks shared by the transformer runtimes (float32 numpy)."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_SQRT_2_OVER_PI = np.float32(np.sqrt(2.0 / np.pi))
# Exported names of openblas_set_num_threads in the OpenBLAS builds numpy wheels bundle.
_SET_THREADS_SYMBOLS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads",
)


def limit_blas_threads(threads: int = 1) -> bool:
    """Makes numpy's bundled OpenBLAS use ``threads`` threads; True when it could.

    Requests here are small matrices (one sentence, one token): multi-threaded OpenBLAS spins its
    threads against the agent's other work and was measured 25x slower (260 ms instead of 9.5 ms
    for one MiniLM sentence on a busy 2-core node). Parallelism comes from serving requests
    concurrently instead. Setting OPENBLAS_NUM_THREADS only works before numpy is imported, so
    this calls the library directly.
    """
    libs_dir = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    for library in sorted(libs_dir.glob("libscipy_openblas*.so*")) + sorted(libs_dir.glob("libopenblas*.so*")):
        try:
            handle = ctypes.CDLL(str(library))
        except OSError:
            continue
        for symbol in _SET_THREADS_SYMBOLS:
            setter = getattr(handle, symbol, None)
            if setter is not None:
                setter(ctypes.c_int(threads))
                return True
    log.info("numpy's BLAS is not a bundled OpenBLAS; leaving its thread count alone")
    return False


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(variance + np.float32(eps)) * weight + bias


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    # Subtracting the max keeps exp() finite for large logits without changing the result.
    shifted = x - x.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def erf(x: np.ndarray) -> np.ndarray:
    """Error function, Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7).

    numpy has no erf and scipy is not a dependency; this error is far below float32 noise after a
    layer norm, and BERT's exact ("gelu") activation needs erf rather than the tanh approximation.
    """
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (sign * (1.0 - poly * np.exp(-a * a))).astype(x.dtype, copy=False)


def gelu_exact(x: np.ndarray) -> np.ndarray:
    """BERT's GELU: x * Phi(x) with the exact normal CDF."""
    return x * np.float32(0.5) * (np.float32(1.0) + erf(x / np.float32(np.sqrt(2.0))))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GPT-2's GELU ("gelu_new"), the tanh approximation the original weights were trained with."""
    # x * x * x, not x**3: numpy's power on float32 took 0.5 ms for one token's 3,072 values (250x).
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(_SQRT_2_OVER_PI * (x + np.float32(0.044715) * (x * x * x))))
