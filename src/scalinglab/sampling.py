"""Text from a trained model: continue a prompt, reproducibly from a seed.

`sample` loads a run (a run directory, a checkpoint file, or a run id in the results store) and
returns a `Sample`; `sample_model` does the work for a model already in memory, so a report can
sample many checkpoints of a study with the same prompt and seed.

The model sees at most its training length (`seq_len` of the run config) at once: a longer prompt
or continuation keeps the last `seq_len` tokens, since positions beyond those were never trained.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from scalinglab.errors import UserError


@dataclass(frozen=True)
class Sample:
    """A prompt and the model's continuation of it (`text`, decoded; bytes that are not valid
    UTF-8 show as U+FFFD), with what produced it."""

    prompt: str
    text: str
    run_id: str
    step: int
    tokens: int
    temperature: float
    top_k: int | None
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def check_settings(prompt: str, tokens: int, temperature: float, top_k: int | None) -> None:
    """Refuse sampling settings a user got wrong, each with its fix."""
    if not prompt:
        raise UserError("the prompt is empty; give some text to continue, e.g. --prompt 'def main('")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise UserError(f"tokens must be a whole number >= 1, got {tokens!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise UserError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise UserError(f"top_k must be a whole number >= 1 (or None for no limit), got {top_k!r}")


def encode_prompt(tokenizer, prompt: str, vocab_size: int) -> list[int]:
    """The prompt's token ids; refuses text that is not valid Unicode or ids the model lacks."""
    try:
        data = prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = prompt[exc.start : exc.end].encode("unicode_escape").decode("ascii")
        raise UserError(f"the prompt cannot be encoded as UTF-8 (character {bad} at offset {exc.start}); "
                        "pass valid text") from None
    ids = [int(t) for t in tokenizer.encode(data)]
    if not ids:
        raise UserError("the prompt encodes to no tokens; give some text to continue")
    if max(ids) >= vocab_size:
        raise UserError(f"the prompt gives token {max(ids)} but the model has {vocab_size} tokens; the checkpoint's "
                        "tokenizer does not match its model: sample another checkpoint")
    return ids


def sample_model(model, tokenizer, prompt: str, tokens: int, *, temperature: float, top_k: int | None, seed: int,
                 context: int | None) -> str:
    """Continue `prompt` by `tokens` tokens of `model` (a `GPT`); returns the continuation only.

    Draws come from a CPU generator seeded with `seed`, so the same model, prompt and settings
    give the same text. `context`: the run's training length (None: no limit).
    """
    import torch

    check_settings(prompt, tokens, temperature, top_k)
    ids = encode_prompt(tokenizer, prompt, model.cfg.vocab_size)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(int(seed))
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    out = model.generate(idx, tokens, temperature=float(temperature), top_k=top_k, generator=generator,
                         context=context)
    new = out[0, len(ids) :].tolist()
    return tokenizer.decode(new).decode("utf-8", errors="replace")


def training_context(config: dict) -> int | None:
    """The sequence length a checkpoint's run config trained on (None when it records none)."""
    seq_len = (config.get("train") or {}).get("seq_len", config.get("seq_len"))
    return int(seq_len) if seq_len else None


def sample(run: str | Path, prompt: str, tokens: int = 200, *, temperature: float = 0.8, top_k: int | None = 40,
           seed: int = 0, db: str | Path | None = None) -> Sample:
    """Continue `prompt` with the model of `run`: a run directory (its last checkpoint), a .pt
    checkpoint, or a run id looked up in the results store `db`."""
    from scalinglab.train.checkpoint import load_model, tokenizer_from_checkpoint

    check_settings(prompt, tokens, temperature, top_k)
    path, run_id = resolve_run(run, db)
    model, state = load_model(path)
    config = state.get("config") or {}
    text = sample_model(model, tokenizer_from_checkpoint(state), prompt, tokens, temperature=temperature, top_k=top_k,
                        seed=seed, context=training_context(config))
    return Sample(prompt=prompt, text=text, run_id=run_id or run_id_of(path, config), step=int(state.get("step", 0)),
                  tokens=tokens, temperature=float(temperature), top_k=top_k, seed=int(seed))


def resolve_run(run: str | Path, db: str | Path | None) -> tuple[Path, str | None]:
    """The checkpoint file for `run` and, when it was given as a run id, that id."""
    path = Path(run)
    if path.exists():
        return checkpoint_in(path, f"{path}"), None
    run_id = str(run)
    if db is None:
        raise UserError(f"no run directory or checkpoint at {run}; give a run directory, a .pt file, or a run id "
                        "with a results store (--db)")
    if not Path(db).exists():
        raise UserError(f"unknown run {run_id!r}: there is no results store at {db}; give a run directory, a .pt file, "
                        "or the --db that recorded the run")
    from scalinglab.store import open_store

    row = open_store(db).get_run(run_id)
    if row is None:
        raise UserError(f"unknown run id {run_id!r} in {db}; list the runs with `scalinglab runs --db {db}`, or give a "
                        "run directory or .pt file")
    if not row.get("out_dir"):
        raise UserError(f"run {run_id} in {db} records no directory, so it has no checkpoint; train it first")
    return checkpoint_in(Path(row["out_dir"]), f"run {run_id} ({row['out_dir']})"), run_id


def checkpoint_in(path: Path, what: str) -> Path:
    """A run directory's last checkpoint, or `path` itself when it is a file."""
    if path.is_dir():
        last = path / "last.pt"
        if not last.exists():
            raise UserError(f"{what} has no checkpoint (last.pt); train or resume it first, or give a .pt file")
        return last
    if not path.exists():
        raise UserError(f"{what}: directory not found; the run's folder was moved or deleted, give its new path")
    return path


def run_id_of(checkpoint: Path, config: dict) -> str:
    """The id of the run a checkpoint belongs to, named the way the trainer names runs; the
    folder's name for checkpoints without a run kind."""
    from scalinglab.config import config_hash

    if "kind" in config:
        return f"{str(config['kind']).replace(':', '-')}-{config_hash(config)}"
    return checkpoint.parent.name
