"""Typed run configuration: a TOML file, then command-line overrides, then resolution.

A run config has four sections, each a dataclass with documented fields:

    [corpus]   CorpusConfig  (scalinglab.corpus.prepare)
    [model]    size = "100k" | params = 1e5 | an explicit shape (n_layer, d_model, ...)
    [optim]    OptimConfig   (below: AdamW, clipping, the schedule; shared by every run config)
    [train]    TrainConfig   (below: budget, batch, evaluation, device)

`build_config` builds any config dataclass (a run's, a probe's) the same way: defaults, a TOML
file, `--set section.field=value` overrides, then explicit flags; errors name the field.

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
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scalinglab.corpus.prepare import CorpusConfig
from scalinglab.errors import UserError
from scalinglab.model import ModelConfig, default_heads, preset, shape_for_params

if TYPE_CHECKING:
    from scalinglab.train.schedules import Schedule

SCHEDULES = ("constant", "cosine", "wsd")
DECAY_CHOICES = ("matrices", "all")
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


@dataclass(frozen=True)
class OptimConfig:
    """How every run steps: AdamW, gradient clipping and the learning-rate schedule.

    Every run config includes one (the `[optim]` section); a probe that trains differently
    states its defaults in one line where it declares its config.

    lr: peak learning rate; None applies the width rule in `scalinglab.train.hparams`.
    warmup: linear warmup steps; None applies the rule (5% of the run, 64..256 steps).
    schedule: constant | cosine | wsd. cosine decays to min_lr_frac x lr; wsd holds the peak, then
      cools down over the last cooldown_frac of the run with cooldown_shape (1-sqrt | linear |
      cosine) to zero.
    weight_decay: AdamW decay. decay: which parameters it applies to: "matrices" (weight
      matrices only; norm gains and the embedding are never decayed, as usual for GPTs) or
      "all" (every parameter, as the grokking papers do).
    beta1, beta2, eps: AdamW. grad_clip: clip the gradient norm to this (0: off).
    """

    lr: float | None = None
    warmup: int | None = None
    schedule: str = "wsd"
    cooldown_frac: float = 0.2
    cooldown_shape: str = "1-sqrt"
    min_lr_frac: float = 0.1
    weight_decay: float = 0.1
    decay: str = "matrices"
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0

    def validate(self) -> None:
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"optim.lr must be a positive number, got {self.lr}")
        if self.warmup is not None and self.warmup < 0:
            raise UserError(f"optim.warmup must be >= 0 steps, got {self.warmup}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown optim.schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.cooldown_shape not in COOLDOWN_SHAPES:
            raise UserError(f"unknown optim.cooldown_shape {self.cooldown_shape!r}; "
                            f"choose one of {', '.join(COOLDOWN_SHAPES)}")
        if not 0 < self.cooldown_frac <= 1:
            raise UserError(f"optim.cooldown_frac must lie in (0, 1], got {self.cooldown_frac}")
        if not 0 <= self.min_lr_frac <= 1:
            raise UserError(f"optim.min_lr_frac must lie in [0, 1], got {self.min_lr_frac}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise UserError(f"optim.weight_decay must be a number >= 0, got {self.weight_decay}")
        if self.decay not in DECAY_CHOICES:
            raise UserError(f"unknown optim.decay {self.decay!r}; choose one of {', '.join(DECAY_CHOICES)}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise UserError(f"optim.beta1 and optim.beta2 must lie in [0, 1), got ({self.beta1}, {self.beta2})")
        if not self.eps > 0:
            raise UserError(f"optim.eps must be > 0, got {self.eps}")
        if not (self.grad_clip >= 0 and math.isfinite(self.grad_clip)):
            raise UserError(f"optim.grad_clip must be >= 0 (0: off), got {self.grad_clip}")

    def schedule_for(self, total_steps: int, warmup: int | None = None) -> Schedule:
        """The schedule of a run of `total_steps` updates (`warmup`: the resolved warmup when
        this config leaves it to a rule)."""
        from scalinglab.train.schedules import Schedule  # the train package imports this module

        warmup = min(self.warmup if warmup is None else warmup, total_steps)
        decay_start = None
        if self.schedule == "wsd":
            decay_start = max(warmup, total_steps - max(1, round(self.cooldown_frac * total_steps)))
        return Schedule(kind=self.schedule, total_steps=total_steps, warmup_steps=warmup, decay_start=decay_start,
                        shape=self.cooldown_shape, min_lr_frac=self.min_lr_frac)


@dataclass
class TrainConfig:
    """How long and on what a corpus run trains (how it steps is `OptimConfig`).

    tokens / tpp: the budget, in training tokens or tokens per non-embedding parameter (one of
      them; tokens wins when both are set).
    batch_size, seq_len: sequences per step and tokens per sequence; batch_size None applies the
      size rule in `scalinglab.train.hparams`.
    eval_points: evaluations, log-spaced over the run (the last step always included).
    eval_tokens: tokens of the fixed val set and of the fixed train subset per evaluation
      (0: the whole val split).
    seed: model initialisation and data order.
    device: auto | cpu | cuda | cuda:N. dtype: auto | float32 | bfloat16 (auto: float32 on CPU,
      bfloat16 autocast on CUDA). threads: torch threads on CPU (1: one per worker).
    compile: torch.compile the model (CUDA).
    checkpoint_every: seconds between checkpoints (see `scalinglab.train.engine`).
    """

    tokens: float | None = None
    tpp: float | None = 20.0
    batch_size: int | None = None
    seq_len: int = 256
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
            raise UserError("give a training budget: train.tokens (--tokens) or train.tpp (--tpp, tokens per parameter)")
        if self.tokens is not None and not (self.tokens > 0 and math.isfinite(self.tokens)):
            raise UserError(f"train.tokens must be a positive number, got {self.tokens}")
        if self.tpp is not None and not (self.tpp > 0 and math.isfinite(self.tpp)):
            raise UserError(f"train.tpp must be a positive number, got {self.tpp}")
        for name in ("seq_len", "eval_points", "threads"):
            if getattr(self, name) <= 0:
                raise UserError(f"train.{name} must be a positive integer, got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size <= 0:
            raise UserError(f"train.batch_size must be a positive integer, got {self.batch_size}")
        if self.eval_tokens < 0:
            raise UserError(f"train.eval_tokens must be >= 0, got {self.eval_tokens}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise UserError(f"unknown train.dtype {self.dtype!r}; choose auto, float32 or bfloat16")


@dataclass
class RunConfig:
    """Everything that defines a training run on a corpus."""

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        return from_dict(cls, data)

    def validate(self) -> None:
        self.corpus.validate()
        self.optim.validate()
        self.train.validate()


# --- building any config dataclass from a file, --set overrides and flags ------------------------------

def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build the config dataclass `cls` from plain data (a TOML table), checking every name and
    type. A field whose type is itself a config dataclass is a section (a nested table)."""
    if not isinstance(data, dict):
        raise UserError(f"[{where.rstrip('.')}] must be a table of settings, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(known))
    if unknown:
        moved = [f"{where}{k} is now {_moved_to(k)}.{k}" for k in unknown if _moved_to(k) and not where.startswith(_moved_to(k))]
        hint = "; ".join(moved) if moved else "known: " + ", ".join(sorted(known))
        names = ", ".join(where + k for k in unknown)
        raise UserError(f"unknown config field(s) {names}; {hint}")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if _is_section(hint):
            # a section given in part keeps the rest of the field's default (a probe's own optimizer)
            default = _field_default(known[name])
            base = asdict(default) if default is not None and isinstance(value, dict) else {}
            values[name] = from_dict(hint, {**base, **value} if isinstance(value, dict) else value,
                                     f"{where}{name}.")
        else:
            values[name] = _coerce(f"{where}{name}", value, hint)
    return cls(**values)


def _field_default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and hasattr(annotation, "__dataclass_fields__")


def _moved_to(name: str) -> str | None:
    """Settings that moved to the shared [optim] section, for a helpful error on old configs."""
    return "optim" if name in {f.name for f in fields(OptimConfig)} else None


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Check a config value against its field's type (int, float, str, bool, tuples of those,
    optionally None); ints are accepted where floats are expected."""
    allowed = set(typing.get_args(annotation)) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else {annotation}
    if value is None and type(None) in allowed:
        return None
    for option in allowed:
        if typing.get_origin(option) is list and isinstance(value, (list, tuple)):
            (item,) = typing.get_args(option)
            return [_coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
        if typing.get_origin(option) is tuple and isinstance(value, (list, tuple)):
            args = typing.get_args(option)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value))
            if len(args) == len(value):
                return tuple(_coerce(f"{name}[{i}]", v, t) for i, (v, t) in enumerate(zip(value, args)))
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
                                 "text" if t is str else "a list" if typing.get_origin(t) is tuple else
                                 "nothing" for t in allowed}))
    if allowed == {int} or allowed == {int, type(None)}:
        wanted = "a whole number" + (" or nothing" if type(None) in allowed else "")
    raise UserError(f"{name} must be {wanted}, got {value!r}")


def read_toml(path: str | Path | None) -> dict:
    """A TOML config file as plain data ({} when `path` is None)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        raise UserError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path} as TOML: {exc}") from None


def set_value(data: dict, key: str, value: Any) -> None:
    """Put `value` at the dotted `key` ("optim.lr") of nested plain data."""
    *sections, name = key.split(".")
    for section in sections:
        data = data.setdefault(section, {})
        if not isinstance(data, dict):
            raise UserError(f"cannot set {key}: {section} is a value, not a section")
    data[name] = value


def apply_sets(data: dict, sets: list[str]) -> dict:
    """Apply `--set key=value` overrides (key dotted by section, e.g. optim.lr=1e-3; values parsed
    as TOML, else taken as text) to plain config data."""
    for item in sets:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise UserError(f"--set takes field=value or section.field=value (e.g. optim.lr=1e-3), got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        set_value(data, key.strip(), value)
    return data


def build_config(cls: type, path: str | Path | None = None, sets: list[str] = (), base: Any = None,
                 **flags: Any) -> Any:
    """A config of type `cls`: its defaults (or `base`), then a TOML file, then `--set`
    overrides, then explicit flags given as `section__field=value` (None: not given). Every
    name and type is checked, and errors name the config field (`optim.lr`), which is also
    what `--set` takes."""
    data = asdict(base) if base is not None else {}
    _merge(data, read_toml(path))
    apply_sets(data, list(sets))
    from_dict(cls, data)  # the file and --set are checked even where a flag then replaces a value
    for key, value in flags.items():
        if value is not None:
            set_value(data, key.replace("__", "."), value)
    return from_dict(cls, data)


def _merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def load_config(path: str | Path | None) -> RunConfig:
    """Read a TOML run config (or the defaults when `path` is None)."""
    return build_config(RunConfig, path)


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `section.field=value` overrides to a run config."""
    return build_config(RunConfig, None, overrides, base=cfg)


def build_run_config(path: str | Path | None, sets: list[str], **flags: Any) -> RunConfig:
    """A run config from a file, `--set` overrides and flags (`section__field=value`). A size
    given replaces a params count and the other way round; a tpp budget given alone replaces a
    token budget from the file."""
    data = asdict(build_config(RunConfig, path, sets, **flags))
    if flags.get("model__params") is not None:
        data["model"]["size"] = None
    if flags.get("model__size") is not None:
        data["model"]["params"] = None
    if flags.get("train__tpp") is not None and flags.get("train__tokens") is None:
        data["train"]["tokens"] = None
    return RunConfig.from_dict(data)


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
    return [f"{key}: {a!r} -> {b!r}" for key, a, b in config_changes(old, new, prefix)]


def config_changes(old: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


# The command-line option behind each config field a user sets, for refusals that name them.
OPTION_OF = {
    "train.tokens": "--tokens", "train.batch_size": "--batch-size", "train.seq_len": "--seq-len", "train.lr": "--lr",
    "train.seed": "--seed", "train.eval_tokens": "--eval-tokens", "train.device": "--device", "train.dtype": "--dtype",
    "train.schedule.kind": "--schedule", "train.schedule.warmup_steps": "--warmup",
    "train.schedule.shape": "--cooldown-shape", "corpus.source": "--corpus", "corpus.field": "--field",
    "corpus.glob": "--glob", "corpus.tokenizer": "--tokenizer", "corpus.vocab_size": "--vocab-size",
}
# Fields the run plan derives from others (the step count from the tokens, the default learning
# rate from the model's width): a change there is a consequence unless nothing else changed.
DERIVED = {"train.eval_steps", "train.total_steps", "train.batch_size", "train.schedule.decay_start", "train.schedule.total_steps",
           "train.schedule.warmup_steps", "train.lr", "corpus_key"}


def describe_changes(old: dict, new: dict) -> str:
    """The settings a user changed between two run configs, by the options they set them with,
    and (after them) what merely follows from those."""
    changes = config_changes(old, new)
    primary = [c for c in changes if c[0] not in DERIVED] or changes
    derived = [c for c in changes if c not in primary]
    said, model_said = [], False
    for key, a, b in primary:
        if key.startswith("model."):
            if not model_said:
                shape = lambda m: f"{m.get('n_layer')}x{m.get('d_model')}"  # noqa: E731
                said.append(f"the model (--size/--params): {shape(old.get('model', {}))} -> {shape(new.get('model', {}))}")
                model_said = True
            continue
        option = OPTION_OF.get(key, key)
        said.append(f"{option}: {_short(a)} -> {_short(b)}")
    text = "you changed " + "; ".join(said[:4]) + (f" and {len(said) - 4} more" if len(said) > 4 else "")
    if derived:
        text += " (which also changes " + ", ".join(sorted({k.rsplit('.', 1)[-1].replace('_', ' ') for k, *_ in derived})) + ")"
    return text


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."

