"""Checkpoints: everything needed to continue a run bit-identically, written atomically.

A checkpoint holds the model, the optimizer (moments and step counts), the training step (which
fixes the data position and the schedule), RNG states and the resolved config. It is written to
a temporary file in the same directory and renamed into place, so a kill at any moment leaves
either the old checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalinglab.errors import UserError
from scalinglab.fsutil import atomic_open


def rng_state() -> dict:
    """RNG states in types a `weights_only` load accepts (tensors, numbers, lists)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))


def save_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    config: dict, extra: dict[str, Any] | None = None, tokenizer: dict | None = None) -> str:
    """Atomically write a checkpoint; returns its SHA-256.

    `tokenizer` ({"spec": ..., "json": <HF tokenizer JSON or None>}) makes the checkpoint
    self-contained: a compressor can rebuild the tokenizer without the corpus cache.
    """
    path = Path(path)
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "rng": rng_state(),
        "config": config,
        "extra": extra or {},
        "tokenizer": tokenizer,
    }
    with atomic_open(path) as fh:
        torch.save(payload, fh)
    return file_sha256(path)


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    try:
        # weights_only: a checkpoint someone sends you cannot run code when it is loaded
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise UserError(f"cannot read checkpoint {path} ({type(exc).__name__}); it may be damaged") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file from a path that is a `.pt` file or a run directory (its `last.pt`)."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.exists():
        raise UserError(f"no checkpoint at {path}; give a run directory or a .pt file")
    return path


def load_model(path: str | Path) -> tuple["torch.nn.Module", dict]:
    """The trained model (eval mode, CPU, float32) and the checkpoint payload from a run
    directory or checkpoint file. The payload holds `config` (the resolved run config),
    `step` and `tokenizer`."""
    from scalinglab.model import GPT, ModelConfig

    state = load_checkpoint(resolve_checkpoint(path))
    model = GPT(ModelConfig(**state["config"]["model"]))
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


def tokenizer_from_checkpoint(state: dict):
    """Rebuild the tokenizer a checkpoint was trained with."""
    from scalinglab.corpus.tokenizers import BPETokenizer, ByteTokenizer

    info = state.get("tokenizer") or {"spec": {"kind": "byte"}}
    if info["spec"]["kind"] == "byte":
        return ByteTokenizer()
    from tokenizers import Tokenizer as HFTokenizer

    return BPETokenizer(HFTokenizer.from_str(info["json"]))
