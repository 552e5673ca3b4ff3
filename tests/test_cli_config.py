"""Every command that trains takes --config and --set, and a default lives in one place: an option
that sets a config field either defaults to None (the config's default applies) or equals it."""

from __future__ import annotations

import click
import pytest
import typer

from scalinglab.cli import app
from scalinglab.config import RunConfig, build_config
from scalinglab.probes.capacity import CapacityConfig
from scalinglab.probes.facts_rules import FactsRulesConfig
from scalinglab.probes.grokking import GrokConfig
from scalinglab.probes.memorisation import MemorisationConfig
from scalinglab.study import study_preset
from scalinglab.study.analysis import FIT_FROM_TPP


def _default(config, path: str):
    value = config
    for name in path.split("."):
        value = getattr(value, name)
    return value


# command -> (its config with the command's defaults, {option: config field it sets})
COMMANDS = {
    "train": (RunConfig(), {
        "corpus": "corpus.source", "field": "corpus.field", "glob": "corpus.glob", "tokenizer": "corpus.tokenizer",
        "vocab_size": "corpus.vocab_size", "size": "model.size", "params": "model.params", "tokens": "train.tokens",
        "tpp": "train.tpp", "batch_size": "train.batch_size", "seq_len": "train.seq_len", "lr": "optim.lr",
        "warmup": "optim.warmup", "schedule": "optim.schedule", "cooldown_frac": "optim.cooldown_frac",
        "cooldown_shape": "optim.cooldown_shape", "eval_points": "train.eval_points",
        "eval_tokens": "train.eval_tokens", "seed": "train.seed", "device": "train.device", "dtype": "train.dtype",
        "threads": "train.threads", "compile": "train.compile"}),
    "study": (study_preset("default"), {
        "corpus": "corpus.source", "field": "corpus.field", "glob": "corpus.glob", "tokenizer": "corpus.tokenizer",
        "vocab_size": "corpus.vocab_size", "sizes": "sizes", "budget": "budget", "max_doublings": "max_doublings",
        "cooldown_frac": "cooldown_frac", "cooldown_shape": "cooldown_shape", "workers": "workers",
        "seq_len": "seq_len", "seed": "seed", "device": "device", "name": "name"}),
    "probe capacity": (CapacityConfig(), {
        "vocab": "vocab_size", "seq_len": "seq_len", "steps": "steps", "lr": "optim.lr", "schedule": "optim.schedule",
        "batch_tokens": "max_batch_tokens", "seed": "seed", "device": "device"}),
    "probe memorisation": (MemorisationConfig(), {
        "corpus": "corpus.source", "tokenizer": "corpus.tokenizer", "size": "size", "params": "params",
        "budget_tpp": "budget_tpp", "seq_len": "seq_len", "eval_windows": "eval_windows", "alpha": "alpha",
        "seed": "seed", "device": "device"}),
    "probe grokking": (GrokConfig(), {
        "p": "p", "op": "op", "frac": "train_frac", "model": "model", "epochs": "max_epochs", "lr": "optim.lr",
        "wd": "optim.weight_decay", "seed": "seed", "grokfast": "grokfast", "grokfast_alpha": "grokfast_alpha",
        "grokfast_lambda": "grokfast_lamb", "stop_after": "stop_after", "eval_every": "eval_every",
        "device": "device"}),
    "probe facts-rules": (FactsRulesConfig(), {
        "rule_share": "rule_share", "alphabet": "alphabet", "d_model": "d_model", "n_layer": "n_layer",
        "epochs": "epochs", "lr": "optim.lr", "batch_size": "batch_size", "seed": "seed"}),
    "probe repetition": (RunConfig(), {
        "corpus": "corpus.source", "tokenizer": "corpus.tokenizer", "params": "model.params",
        "seq_len": "train.seq_len", "batch_size": "train.batch_size", "lr": "optim.lr",
        "eval_tokens": "train.eval_tokens", "seed": "train.seed"}),
}


def _command(path: str) -> click.Command:
    command = typer.main.get_command(app)
    for name in path.split():
        command = command.commands[name]
    return command


@pytest.mark.parametrize("path", list(COMMANDS))
def test_every_training_command_takes_config_and_set(path):
    names = {p.name for p in _command(path).params}
    assert {"config", "set_"} <= names


@pytest.mark.parametrize("path", list(COMMANDS))
def test_cli_defaults_are_the_config_defaults(path):
    config, mapping = COMMANDS[path]
    params = {p.name: p for p in _command(path).params}
    for option, field_path in mapping.items():
        assert option in params, f"{path}: no option {option}"
        default = params[option].default
        assert default is None or default == _default(config, field_path), (
            f"`scalinglab {path} --{option.replace('_', '-')}` defaults to {default!r} but {field_path} to "
            f"{_default(config, field_path)!r}: leave the option's default None")


def test_the_study_fit_start_default_is_the_librarys():
    params = {p.name: p for p in _command("study").params}
    assert params["fit_from"].default == FIT_FROM_TPP


def test_every_config_field_can_be_set_and_errors_name_the_field(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[optim]\nlr = 2e-3\nschedule = "cosine"\n[train]\nseq_len = 64\n')
    cfg = build_config(RunConfig, toml, ["optim.beta2=0.99", "model.size=\"30k\""])
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.optim.beta2, cfg.train.seq_len, cfg.model.size) == (
        2e-3, "cosine", 0.99, 64, "30k")
    grok = build_config(GrokConfig, None, ["p=59", "optim.lr=1e-3"], optim__weight_decay=0.5).resolved()
    assert (grok.p, grok.optim.lr, grok.optim.weight_decay, grok.optim.decay) == (59, 1e-3, 0.5, "all")
    for sets, needle in ((["optim.lr=fast"], "optim.lr must be"), (["optim.nope=1"], "optim.nope"),
                         (["train.lr=1"], "train.lr is now optim.lr")):
        with pytest.raises(Exception, match=needle):
            build_config(RunConfig, None, sets)


def test_a_probe_command_reads_its_config_file(run_cli, tmp_path):
    toml = tmp_path / "grok.toml"
    toml.write_text("p = 1000\n")  # not a prime: the config file reached the probe's validation
    code, _, err = run_cli("probe", "grokking", "--config", str(toml), "--db", str(tmp_path / "s.db"),
                           "--out", str(tmp_path / "g"))
    assert code == 2 and "prime" in err and len(err.strip().splitlines()) == 1
