"""Typed run configuration: a TOML file, then command-line overrides, then resolution.

A config has three sections, each a dataclass with documented fields:

    [corpus]   CorpusConfig  (scalinglab.corpus.prepare)
    [model]    size = "100k" | params = 1e5 | an explicit shape (n_layer, d_model, ...)
    [train]    TrainConfig   (below)

`resolve_model` turns the model section into a concrete `ModelConfig` once the corpus (and so
the vocabulary) is known. The resolved config is what a run stores and what `--resume` compares.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from scalinglab.corpus.prepare import CorpusConfig
from scalinglab.errors import UserError
from scalinglab.model import ModelConfig, default_heads, preset, shape_for_params

SCHEDULES = ("constant", "cosine", "wsd")
COOLDOWN_SHAPES = ("1-sqrt", "linear", "cosine")


@dataclass
class ModelSpec:
    """How to choose the model.

    size: a named preset ("10k" ... "gpt2"). params: ask for any non-embedding count; the closest
    shape is used. n_layer/d_model/n_head: an explicit shape (overrides both). mlp_ratio,
    tie_embeddings: apply to every choice.
    """

    size: str | None = "100k"
    params: float | None = None
    n_layer: int | None = None
    d_model: int | None = None
    n_head: int | None = None
    mlp_ratio: float = 4.0
    tie_embeddings: bool = True


@dataclass
class TrainConfig:
    """How to train.

    tokens / tpp: the budget, in training tokens or tokens per non-embedding parameter (one of
      them; tokens wins when both are set).
    batch_size, seq_len: sequences per step and tokens per sequence; batch_size None applies the
      size rule in `scalinglab.train.hparams`.
    lr: peak learning rate; None applies the width rule in `scalinglab.train.hparams`.
    warmup: linear warmup steps; None applies the rule (5% of the run, 16..256 steps).
    schedule: constant | cosine | wsd. cosine decays to min_lr_frac x lr; wsd holds the peak, then
      cools down over the last cooldown_frac of the run with cooldown_shape (1-sqrt | linear |
      cosine) to zero.
    weight_decay, beta1, beta2, grad_clip: AdamW and gradient clipping.
    eval_points: evaluations, log-spaced over the run (the last step always included).
    eval_tokens: tokens of the fixed val set and of the fixed train subset per evaluation
      (0: the whole val split).
    seed: model initialisation and data order.
    device: auto | cpu | cuda | cuda:N. dtype: auto | float32 | bfloat16 (auto: float32 on CPU,
      bfloat16 autocast on CUDA). threads: torch threads on CPU (1: one per worker).
    compile: torch.compile the model (CUDA).
    checkpoint_every: seconds between checkpoints (also written at every evaluation).
    """

    tokens: float | None = None
    tpp: float | None = 20.0
    batch_size: int | None = None
    seq_len: int = 256
    lr: float | None = None
    warmup: int | None = None
    schedule: str = "wsd"
    cooldown_frac: float = 0.2
    cooldown_shape: str = "1-sqrt"
    min_lr_frac: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_points: int = 12
    eval_tokens: int = 65536
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 1
    compile: bool = False
    checkpoint_every: float = 300.0

    def validate(self) -> None:
        if self.tokens is None and self.tpp is None:
            raise UserError("give a training budget: --tokens N or --tpp R (tokens per parameter)")
        if self.tokens is not None and not (self.tokens > 0 and math.isfinite(self.tokens)):
            raise UserError(f"--tokens must be a positive number, got {self.tokens}")
        if self.tpp is not None and not (self.tpp > 0 and math.isfinite(self.tpp)):
            raise UserError(f"--tpp must be a positive number, got {self.tpp}")
        for name in ("seq_len", "eval_points", "threads"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size <= 0:
            raise UserError(f"batch_size must be a positive integer, got {self.batch_size}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"lr must be a positive number, got {self.lr}")
        if self.warmup is not None and self.warmup < 0:
            raise UserError(f"warmup must be >= 0 steps, got {self.warmup}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.cooldown_shape not in COOLDOWN_SHAPES:
            raise UserError(f"unknown cooldown shape {self.cooldown_shape!r}; choose one of {', '.join(COOLDOWN_SHAPES)}")
        if not 0 < self.cooldown_frac <= 1:
            raise UserError(f"cooldown_frac must lie in (0, 1], got {self.cooldown_frac}")
        if not 0 <= self.min_lr_frac <= 1:
            raise UserError(f"min_lr_frac must lie in [0, 1], got {self.min_lr_frac}")
        if self.eval_tokens < 0:
            raise UserError(f"eval_tokens must be >= 0, got {self.eval_tokens}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise UserError(f"unknown dtype {self.dtype!r}; choose auto, float32 or bfloat16")


@dataclass
class RunConfig:
    """Everything that defines a training run."""

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        data = dict(data)
        unknown = set(data) - {"corpus", "model", "train", "name"}
        if unknown:
            raise UserError(f"unknown config section(s): {', '.join(sorted(unknown))}; use corpus, model, train")
        return cls(
            corpus=_build(CorpusConfig, data.get("corpus", {}), "corpus"),
            model=_build(ModelSpec, data.get("model", {}), "model"),
            train=_build(TrainConfig, data.get("train", {}), "train"),
            name=data.get("name"),
        )

    def validate(self) -> None:
        self.corpus.validate()
        self.train.validate()


def _build(cls: type, values: dict, section: str) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise UserError(
            f"unknown field(s) in [{section}]: {', '.join(sorted(unknown))}; known: {', '.join(sorted(names))}"
        )
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(f"{section}.{k}", v, hints[k]) for k, v in values.items()})


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check a config value against its field's type (int, float, str, bool, optionally None);
    ints are accepted where floats are expected."""
    allowed = set(typing.get_args(annotation)) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else {annotation}
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, bool):
        if bool in allowed:
            return value
    elif isinstance(value, int) and int in allowed:
        return value
    elif isinstance(value, (int, float)) and float in allowed:
        return float(value)
    elif isinstance(value, str) and str in allowed:
        return value
    wanted = " or ".join(sorted({"a number" if t in (int, float) else "true/false" if t is bool else
                                 "text" if t is str else "nothing" for t in allowed}))
    if allowed == {int} or allowed == {int, type(None)}:
        wanted = "a whole number" + (" or nothing" if type(None) in allowed else "")
    raise UserError(f"{name} must be {wanted}, got {value!r}")


def load_config(path: str | Path | None) -> RunConfig:
    """Read a TOML config file (or the defaults when `path` is None)."""
    if path is None:
        return RunConfig()
    path = Path(path)
    if not path.exists():
        raise UserError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path} as TOML: {exc}") from None
    return RunConfig.from_dict(data)


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `section.field=value` overrides (values parsed as TOML, else taken as strings)."""
    data = cfg.to_dict()
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UserError(f"--set takes section.field=value (e.g. train.lr=1e-3), got {item!r}")
        key, raw = item.split("=", 1)
        section, name = key.strip().split(".", 1)
        if section not in ("corpus", "model", "train"):
            raise UserError(f"--set {key}: unknown section {section!r}; use corpus, model or train")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        data[section][name] = value
    return RunConfig.from_dict(data)


def build_run_config(path: str | Path | None, sets: list[str], **flags: Any) -> RunConfig:
    """A config file, then `section.field=value` overrides, then explicit settings given as
    `section__field=value` (None: not given). A size given replaces a params count and the
    other way round; a tpp budget given alone replaces a token budget from the file."""
    cfg = apply_overrides(load_config(path), sets)
    data = cfg.to_dict()
    for key, value in flags.items():
        if value is not None:
            section, name = key.split("__")
            data[section][name] = value
    if flags.get("model__params") is not None:
        data["model"]["size"] = None
    if flags.get("model__size") is not None:
        data["model"]["params"] = None
    if flags.get("train__tpp") is not None and flags.get("train__tokens") is None:
        data["train"]["tokens"] = None
    return RunConfig.from_dict(data)  # checks every value's type


def resolve_model(spec: ModelSpec, vocab_size: int) -> ModelConfig:
    """The concrete shape for a model spec and vocabulary."""
    common = dict(vocab_size=vocab_size, mlp_ratio=spec.mlp_ratio, tie_embeddings=spec.tie_embeddings)
    if spec.n_layer is not None or spec.d_model is not None:
        if spec.n_layer is None or spec.d_model is None:
            raise UserError("an explicit shape needs both n_layer and d_model")
        n_head = spec.n_head or default_heads(spec.d_model)
        return ModelConfig(n_layer=spec.n_layer, d_model=spec.d_model, n_head=n_head, **common)
    if spec.params is not None:
        return shape_for_params(spec.params, **common)
    if spec.size is None:
        raise UserError("choose a model: --size NAME or --params N")
    return preset(spec.size, **common)


def config_hash(data: dict) -> str:
    """A short stable hash of a JSON-able config."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def diff_configs(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two config dicts (for `--resume` refusals)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_configs(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out

