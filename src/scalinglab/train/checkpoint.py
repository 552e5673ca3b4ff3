"""Checkpoints: everything needed to continue a run bit-identically, written atomically.

A checkpoint holds the model, the optimizer (moments and step counts), the training step (which
fixes the data position and the schedule), RNG states and the resolved config. It is two files:

    last.pt                    optimizer, step, RNG states, config, the task's state, tokenizer,
                               and the name and SHA-256 of the weights file (torch.save)
    last.step<S>.safetensors   the model's weights at step S, with the config, the step and the
                               tokenizer as metadata: readable without running any code from it

Each is written to a temporary file in the same directory and renamed into place. The weights
file is named by its step (the weights at one step are the same bytes whenever they are written),
and goes first: a kill at any moment leaves the old `.pt` with its own weights file, or the new
one with its, never a torn pair. Weights files no `.pt` names any more are removed after the
rename. A checkpoint from before (one `.pt` holding the weights too) still loads.
"""

from __future__ import annotations

import hashlib
import json
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


def weights_path(path: Path, step: int) -> Path:
    """The safetensors file holding the weights of checkpoint `path` at `step`."""
    path = Path(path)
    return path.with_name(f"{path.stem}.step{step}.safetensors")


def save_checkpoint(path: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    config: dict, extra: dict[str, Any] | None = None, tokenizer: dict | None = None) -> str:
    """Atomically write a checkpoint (weights file first, then the `.pt`); returns the `.pt`'s SHA-256.

    `tokenizer` ({"spec": ..., "json": <HF tokenizer JSON or None>}) makes the checkpoint
    self-contained: a compressor can rebuild the tokenizer without the corpus cache.
    """
    from safetensors.torch import save as save_tensors

    path = Path(path)
    weights = weights_path(path, step)
    # metadata: a model can be rebuilt from the safetensors file alone
    meta = {"format": "scalinglab", "step": str(step), "config": json.dumps(config, sort_keys=True),
            "tokenizer": json.dumps(tokenizer)}
    blob = save_tensors(_unshared(model.state_dict()), metadata=meta)
    fresh = not weights.exists()  # else the same step's weights, which the current .pt may name
    with atomic_open(weights) as fh:
        fh.write(blob)
    payload = {
        "weights": {"file": weights.name, "sha256": hashlib.sha256(blob).hexdigest()},
        "optimizer": optimizer.state_dict(),
        "step": step,
        "rng": rng_state(),
        "config": config,
        "extra": extra or {},
        "tokenizer": tokenizer,
    }
    try:
        with atomic_open(path) as fh:
            torch.save(payload, fh)
    except BaseException:
        if fresh:  # a failed checkpoint leaves nothing behind
            weights.unlink(missing_ok=True)
        raise
    for old in path.parent.glob(f"{path.stem}.step*.safetensors"):
        if old != weights:
            old.unlink(missing_ok=True)
    return file_sha256(path)


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint: its `.pt` and its weights files."""
    path = Path(path)
    path.unlink(missing_ok=True)
    for weights in path.parent.glob(f"{path.stem}.step*.safetensors"):
        weights.unlink(missing_ok=True)


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied weights): give repeats their own copy."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, tensor in state.items():
        tensor = tensor.detach()
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        out[key] = tensor.clone() if where in seen else tensor.contiguous()
        seen.add(where)
    return out


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's payload, with the weights under "model" (read from its safetensors file, or
    from the `.pt` itself for a checkpoint from before)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    try:
        # weights_only: a checkpoint someone sends you cannot run code when it is loaded
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise UserError(f"cannot read checkpoint {path} ({type(exc).__name__}); it may be damaged") from None
    if "weights" in state and "model" not in state:
        state["model"] = load_weights(path.with_name(state["weights"]["file"]), sha256=state["weights"]["sha256"])
    return state


def load_weights(path: Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors weights file (no code runs: the format holds data only)."""
    from safetensors.torch import load as load_tensors

    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError:
        raise UserError(f"the weights of this checkpoint are missing: {path}; restore the file or train again") from None
    if sha256 is not None and hashlib.sha256(blob).hexdigest() != sha256:
        raise UserError(f"{path} does not match its checkpoint (SHA-256 differs); it may be damaged")
    try:
        return load_tensors(blob)
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise UserError(f"cannot read weights {path} ({type(exc).__name__}); it may be damaged") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file from a path that is a `.pt` file, a `.safetensors` weights file or a run
    directory (its `last.pt`)."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.exists():
        raise UserError(f"no checkpoint at {path}; give a run directory, a .pt or a .safetensors file")
    return path


def read_weights_file(path: Path) -> dict:
    """A checkpoint payload from a weights file alone: "model", "step", "config" and "tokenizer"
    (from its metadata); no optimizer state."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise UserError(f"cannot read weights {path} ({type(exc).__name__}); it may be damaged") from None
    if meta.get("format") != "scalinglab":
        raise UserError(f"{path} holds no scalinglab model (no config in its metadata); give a scalinglab checkpoint")
    return {"model": load_weights(path), "step": int(meta["step"]), "config": json.loads(meta["config"]),
            "tokenizer": json.loads(meta["tokenizer"]), "extra": {}}


def load_model(path: str | Path) -> tuple["torch.nn.Module", dict]:
    """The trained model (eval mode, CPU, float32) and the checkpoint payload from a run
    directory or checkpoint file (`.pt`, or a `.safetensors` weights file alone). The payload
    holds `config` (the resolved run config), `step` and `tokenizer`."""
    from scalinglab.model import GPT, ModelConfig

    path = resolve_checkpoint(path)
    state = read_weights_file(path) if path.suffix == ".safetensors" else load_checkpoint(path)
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
