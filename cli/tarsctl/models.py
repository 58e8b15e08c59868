"""``tarsctl models``: helpers for model files on nodes.

``tarsctl models make-synthetic DIR [--preset edge-tiny|gpt2-small-shape] [--seed N]`` writes a small
randomly initialised GPT-2-format checkpoint (config.json, model.safetensors, tokenizer.json) for
tests and demos: no GPT-2 weights ship with any package we may install and nothing may be fetched
from a hub. The config carries ``"tars_synthetic": true`` and the runtime says so in every output.
The byte-level BPE tokenizer is trained here, on text bundled with Python itself (the pydoc topic
pages) plus a short TARS paragraph, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import ByteLevelBPETokenizer

EOS_TOKEN = "<|endoftext|>"
INIT_STD = 0.02

_TARS_TEXT = """\
TARS runs AI inference and guest functions inside sandboxes on Kubernetes nodes. A node-agent probes
the hardware, picks a sandbox backend, loads the models placed on its node and answers requests over
HTTP. Guests reach the host only through capabilities their model allows: embeddings, generation,
sentiment, the knowledge store, other functions and the operator. When a node fails, the operator
places its models on other nodes; when load grows, it adds replicas; when a model is idle it may
scale to zero. Self-healing means noticing degradation early and acting before users notice.
"""


@dataclass(frozen=True)
class Preset:
    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int
    vocab_size: int
    description: str


PRESETS: dict[str, Preset] = {
    "edge-tiny": Preset(2, 128, 4, 256, 2048, "2 layers x 128 wide, 256 positions (about 0.6M parameters)"),
    # GPT-2 small's transformer shape; the vocabulary is 8,192 byte-level BPE tokens trained on the
    # bundled text rather than GPT-2's 50,257 (which needs GPT-2's own merges), so ~92M parameters
    # instead of 124M.
    "gpt2-small-shape": Preset(
        12, 768, 12, 1024, 8192, "GPT-2 small's shape: 12 layers x 768 wide, 12 heads, 1024 positions"
    ),
}


def training_corpus() -> list[str]:
    """Text for the tokenizer, from the Python installation (so identical wherever Python is)."""
    from pydoc_data.topics import topics

    return [_TARS_TEXT] + [topics[key] for key in sorted(topics)]


def train_tokenizer(vocab_size: int) -> ByteLevelBPETokenizer:
    tokenizer = ByteLevelBPETokenizer(add_prefix_space=False)
    tokenizer.train_from_iterator(
        training_corpus(), vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS_TOKEN], show_progress=False
    )
    return tokenizer


def random_gpt2_weights(preset: Preset, vocab_size: int, seed: int) -> dict[str, np.ndarray]:
    """GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer)."""
    rng = np.random.default_rng(seed)
    d = preset.n_embd
    residual_std = INIT_STD / np.sqrt(2 * preset.n_layer)

    def normal(shape: tuple[int, ...], std: float = INIT_STD) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    weights = {
        "wte.weight": normal((vocab_size, d)),
        "wpe.weight": normal((preset.n_positions, d), 0.01),
        "ln_f.weight": np.ones(d, np.float32),
        "ln_f.bias": np.zeros(d, np.float32),
    }
    for layer in range(preset.n_layer):
        p = f"h.{layer}."
        weights |= {
            p + "ln_1.weight": np.ones(d, np.float32),
            p + "ln_1.bias": np.zeros(d, np.float32),
            p + "attn.c_attn.weight": normal((d, 3 * d)),
            p + "attn.c_attn.bias": np.zeros(3 * d, np.float32),
            p + "attn.c_proj.weight": normal((d, d), residual_std),
            p + "attn.c_proj.bias": np.zeros(d, np.float32),
            p + "ln_2.weight": np.ones(d, np.float32),
            p + "ln_2.bias": np.zeros(d, np.float32),
            p + "mlp.c_fc.weight": normal((d, 4 * d)),
            p + "mlp.c_fc.bias": np.zeros(4 * d, np.float32),
            p + "mlp.c_proj.weight": normal((4 * d, d), residual_std),
            p + "mlp.c_proj.bias": np.zeros(d, np.float32),
        }
    return weights


def make_synthetic(directory: Path, preset: str = "edge-tiny", seed: int = 0) -> Path:
    """Writes a synthetic GPT-2 checkpoint into ``directory`` and returns it."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, not {preset!r}")
    shape = PRESETS[preset]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(shape.vocab_size)
    vocab_size = tokenizer.get_vocab_size()
    eos = tokenizer.token_to_id(EOS_TOKEN)
    tokenizer.save(str(directory / "tokenizer.json"))
    save_file(random_gpt2_weights(shape, vocab_size, seed), str(directory / "model.safetensors"))
    config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": vocab_size,
        "n_positions": shape.n_positions,
        "n_ctx": shape.n_positions,
        "n_embd": shape.n_embd,
        "n_layer": shape.n_layer,
        "n_head": shape.n_head,
        "layer_norm_epsilon": 1e-5,
        "activation_function": "gelu_new",
        "bos_token_id": eos,
        "eos_token_id": eos,
        "tars_synthetic": True,
        "tars_preset": preset,
        "tars_seed": seed,
        "tars_note": "randomly initialised by tarsctl models make-synthetic; not trained",
        "tars_shape": asdict(shape),
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    with console.status(f"writing a synthetic {args.preset} checkpoint to {args.dir}"):
        out = make_synthetic(Path(args.dir), args.preset, args.seed)
    config = json.loads((out / "config.json").read_text())
    size = (out / "model.safetensors").stat().st_size
    console.print(
        f"{out}: {args.preset} ({PRESETS[args.preset].description}), vocab {config['vocab_size']}, "
        f"{size / 2**20:.1f} MiB of [bold]synthetic[/bold] weights (seed {args.seed})"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="model files: make synthetic GPT-2 checkpoints")
    actions = parser.add_subparsers(dest="models_command", required=True)
    synthetic = actions.add_parser(
        "make-synthetic", help="write a randomly initialised GPT-2-format checkpoint (says it is synthetic)"
    )
    synthetic.add_argument("dir", help="directory to write config.json, model.safetensors, tokenizer.json into")
    synthetic.add_argument("--preset", choices=sorted(PRESETS), default="edge-tiny")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.set_defaults(func=_run)
