"""The ecosystem: live curves in TensorBoard and W&B (offline), Hugging Face data sets as corpora,
pretrained tokenizers, and safetensors checkpoints. Nothing here touches the network."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_text
from scalinglab.corpus import CorpusConfig, prepare_corpus, split_bytes
from scalinglab.errors import UserError
from scalinglab.store import open_store
from scalinglab.train import plan_run, train_run
from scalinglab.train.checkpoint import load_checkpoint, load_model
from scalinglab.train.sinks import LOG_ENV
from test_train import tiny_config

datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def _no_sinks_left(monkeypatch):
    # --log sets the variable for the process; restore it after each test
    monkeypatch.delenv(LOG_ENV, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")


def _docs(n: int = 40, seed: int = 0) -> list[str]:
    text = make_text(80_000, seed=seed)
    size = len(text) // n
    return [text[i * size:(i + 1) * size] for i in range(n)]


# --- live curves ------------------------------------------------------------------------------

def _tensorboard_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    values: dict[str, dict[int, float]] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                values.setdefault(value.tag, {})[event.step] = float(tensor_util.make_ndarray(value.tensor))
    return values


def test_tensorboard_events_read_back_equal_the_store_across_a_resume(text_corpus, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    monkeypatch.setenv(LOG_ENV, "tensorboard")
    cfg = tiny_config(text_corpus, eval_points=5)
    corpus = prepare_corpus(cfg.corpus)
    plan = plan_run(cfg, corpus)
    store = open_store(tmp_path / "s.db")
    first = train_run(plan, corpus, store, tmp_path / "run", stop_at_step=plan.total_steps // 2)
    assert first.status == "interrupted"
    result = train_run(plan, corpus, store, tmp_path / "run", resume=True)
    assert result.status == "done"
    events = _tensorboard_scalars(tmp_path / "run" / "tb")
    points = store.points(result.run_id)
    assert len(points) == len(plan.eval_steps) >= 4
    for column in ("val_loss", "val_bpb", "train_loss", "lr", "tokens", "flops", "tokens_per_s"):
        stored = {p["step"]: p[column] for p in points if p[column] is not None}
        assert events[column] == stored, column  # exact: written in double precision, each step once
    extra = json.loads(points[-1]["extra"])
    assert events["extra/batch_loss"][points[-1]["step"]] == extra["batch_loss"]


def test_cli_log_tensorboard_and_wandb_offline(text_corpus, tmp_path, run_cli):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    code, out, err = run_cli("train", "--corpus", text_corpus, "--set", "model.n_layer=1", "--set", "model.d_model=32",
                             "--set", "model.n_head=2", "--tokens", "8000", "--batch-size", "4", "--seq-len", "64",
                             "--eval-points", "2", "--eval-tokens", "1024", "--quiet", "--db", tmp_path / "s.db",
                             "--out", tmp_path / "run", "--log", "tensorboard,wandb")
    assert code == 0, err
    events = _tensorboard_scalars(tmp_path / "run" / "tb")
    assert "val_bpb" in events and "lr" in events
    offline = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))


def test_a_wandb_sink_that_cannot_start_does_not_stop_the_run(text_corpus, tmp_path, monkeypatch, capsys):
    """A run killed with -9 can leave W&B's service holding the run; the resumed run must go on."""
    wandb = pytest.importorskip("wandb")

    def refuse(*args, **kwargs):
        raise RuntimeError("run ID is in use")

    monkeypatch.setattr(wandb, "init", refuse)
    monkeypatch.setenv(LOG_ENV, "wandb")
    cfg = tiny_config(text_corpus, eval_points=2)
    corpus = prepare_corpus(cfg.corpus)
    result = train_run(plan_run(cfg, corpus), corpus, open_store(tmp_path / "s.db"), tmp_path / "run")
    assert result.status == "done" and len(open_store(tmp_path / "s.db").points(result.run_id)) == 2
    assert "W&B could not start" in capsys.readouterr().err


def test_log_refuses_an_unknown_sink_and_a_missing_extra_in_one_line(text_corpus, tmp_path, run_cli, monkeypatch):
    code, _, err = run_cli("train", "--corpus", text_corpus, "--db", tmp_path / "s.db", "--log", "tensorbored")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "tensorbored" in err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    for command in (["train", "--corpus", str(text_corpus)], ["study", "--preset", "smoke"], ["probe", "capacity"]):
        code, _, err = run_cli(*command, "--db", tmp_path / "s.db", "--log", "tensorboard")
        assert code == 2, (command, err)
        assert len(err.strip().splitlines()) == 1 and "pip install 'scalinglab[tensorboard]'" in err
    assert not (tmp_path / "s.db").exists()  # refused before anything was stored


# --- Hugging Face data sets -------------------------------------------------------------------

def test_a_saved_dataset_is_a_corpus_keyed_by_its_content(tmp_path):
    saved = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": _docs(), "n": list(range(40))}).save_to_disk(str(saved))
    first = prepare_corpus(CorpusConfig(source=f"hf:{saved}"))
    again = prepare_corpus(CorpusConfig(source=f"hf:{saved}"))
    assert again.key == first.key and again.path == first.path
    assert prepare_corpus(CorpusConfig(source=str(saved))).meta["source"]["kind"] == "hf"  # a saved folder, no prefix
    assert sum(first.stats(s)["documents"] for s in ("train", "val", "test")) == 40
    assert sum(first.stats(s)["bytes"] for s in ("train", "val", "test")) == sum(len(d) for d in _docs())

    changed = _docs()
    changed[7] = changed[7].replace("alpha", "omega")
    datasets.Dataset.from_dict({"text": changed, "n": list(range(40))}).save_to_disk(str(tmp_path / "ds2"))
    import shutil

    shutil.rmtree(saved)
    (tmp_path / "ds2").rename(saved)
    assert prepare_corpus(CorpusConfig(source=f"hf:{saved}")).key != first.key

    limited = prepare_corpus(CorpusConfig(source=f"hf:{saved}", max_bytes=20_000))
    total = sum(limited.stats(s)["bytes"] for s in ("train", "val", "test"))
    assert 20_000 <= total < 20_000 + 2_100 and limited.key != first.key


def test_dataset_splits_fields_and_hub_layout_shards(tmp_path):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": _docs()}),
                               "validation": datasets.Dataset.from_dict({"content": _docs(seed=1)})})
    dd.save_to_disk(str(tmp_path / "dd"))
    corpus = prepare_corpus(CorpusConfig(source=f"hf:{tmp_path / 'dd'}", split="validation", field="content"))
    assert corpus.meta["source"]["split"] == "validation"
    with pytest.raises(UserError, match="no split 'test'.*--split"):
        prepare_corpus(CorpusConfig(source=f"hf:{tmp_path / 'dd'}", split="test", field="content"))
    with pytest.raises(UserError, match="no field 'text'.*content.*--field"):
        prepare_corpus(CorpusConfig(source=f"hf:{tmp_path / 'dd'}"))

    # a folder of parquet shards as a hub repository lays them out
    shards = tmp_path / "shards" / "data"
    shards.mkdir(parents=True)
    docs = _docs()
    datasets.Dataset.from_dict({"text": docs[:20]}).to_parquet(str(shards / "train-00000-of-00002.parquet"))
    datasets.Dataset.from_dict({"text": docs[20:]}).to_parquet(str(shards / "train-00001-of-00002.parquet"))
    from_shards = prepare_corpus(CorpusConfig(source=f"hf:{tmp_path / 'shards'}"))
    assert sum(from_shards.stats(s)["bytes"] for s in ("train", "val", "test")) == sum(len(d) for d in docs)


def test_a_hub_name_without_network_fails_in_one_line_quickly(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "SCALINGLAB_CACHE": str(tmp_path / "cache")}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "scalinglab", "corpus", "prepare", "--corpus",
                           "hf:HuggingFaceFW/fineweb-edu:sample-10BT"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot reach the Hugging Face hub" in proc.stderr
    assert time.monotonic() - start < 30
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


# --- pretrained tokenizers --------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    """A byte-level BPE saved as tokenizer.json, as GPT-2's and Llama 3's are."""
    from scalinglab.corpus.tokenizers import BPETokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    BPETokenizer.train([make_text(30_000, seed=3).encode()], 400).save(path)
    return path


def test_a_tokenizer_file_prepares_a_corpus_with_exact_bits_per_byte(text_corpus, tokenizer_file, tmp_path):
    corpus = prepare_corpus(CorpusConfig(source=str(text_corpus), tokenizer=str(tokenizer_file)))
    assert corpus.meta["tokenizer"]["kind"] == "pretrained" and corpus.vocab_size == 400
    assert corpus.tokenizer_name == "pretrained:tokenizer.json"
    val = split_bytes(corpus, "val")
    assert len(val) == corpus.stats("val")["bytes"]
    assert int(corpus.token_bytes[np.asarray(corpus.tokens("val"))].sum()) == len(val)  # the bytes bits/byte divides by
    # the same tokenizer elsewhere, under another name: the same corpus
    copy = tmp_path / "gpt2-like.json"
    copy.write_text(tokenizer_file.read_text())
    assert prepare_corpus(CorpusConfig(source=str(text_corpus), tokenizer=str(copy))).key == corpus.key
    # and a run on it stores bits per byte from those bytes, its checkpoint carries the tokenizer
    cfg = tiny_config(text_corpus, tokens=4000, eval_points=1)
    cfg.corpus.tokenizer = str(tokenizer_file)
    plan = plan_run(cfg, corpus)
    result = train_run(plan, corpus, None, tmp_path / "run")
    point = result.points[-1]
    assert point["val_bpb"] < point["val_loss"] / math.log(2)  # > 1 byte per token
    from scalinglab.train.checkpoint import tokenizer_from_checkpoint

    _, state = load_model(tmp_path / "run")
    assert tokenizer_from_checkpoint(state).decode(np.asarray(corpus.tokens("val"))) == val


def test_tokenizers_that_would_break_bits_per_byte_are_refused_in_one_line(text_corpus, tokenizer_file, tmp_path,
                                                                             run_cli):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    lowercasing = Tokenizer.from_file(str(tokenizer_file))
    lowercasing.normalizer = normalizers.Lowercase()
    lowercasing.save(str(tmp_path / "lower.json"))
    (tmp_path / "corpus.txt").write_text(make_text(60_000).replace("alpha", "Alpha"))
    word = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    word.save(str(tmp_path / "word.json"))
    (tmp_path / "junk.json").write_text('{"not": "a tokenizer"}')
    cache = tmp_path / "cache"
    for name, message in (("lower.json", "does not give back the exact bytes"), ("word.json", "not byte-level"),
                          ("junk.json", "is not a tokenizers tokenizer.json"), ("missing.json", "unknown tokenizer")):
        code, _, err = run_cli("corpus", "prepare", tmp_path / "corpus.txt", "--tokenizer", tmp_path / name,
                               "--cache-dir", cache)
        assert code == 2, (name, err)
        assert len(err.strip().splitlines()) == 1 and message in err, (name, err)
    assert not cache.exists() or not [p for p in cache.iterdir() if not p.name.startswith(".")]


# --- checkpoints --------------------------------------------------------------------------------

def _legacy(path: Path) -> None:
    """Rewrite a checkpoint as scalinglab wrote them before: one torch.save file with the weights."""
    state = load_checkpoint(path)
    weights = path.with_name(state.pop("weights")["file"])
    torch.save(state, path)
    weights.unlink()


@pytest.mark.parametrize("old_format", [False, True])
def test_safetensors_checkpoints_and_old_ones_resume_bit_identically(text_corpus, tmp_path, old_format):
    from safetensors import safe_open

    cfg = tiny_config(text_corpus, tokens=12_000)
    corpus = prepare_corpus(cfg.corpus)
    plan = plan_run(cfg, corpus)
    reference = train_run(plan, corpus, None, tmp_path / "ref")
    half = train_run(plan, corpus, None, tmp_path / "run", stop_at_step=plan.total_steps // 2)
    assert half.status == "interrupted"
    last = tmp_path / "run" / "last.pt"
    raw = torch.load(last, map_location="cpu", weights_only=True)
    assert "model" not in raw  # the weights are not in the pickle ...
    weights = tmp_path / "run" / raw["weights"]["file"]
    with safe_open(str(weights), framework="pt") as fh:  # ... but in a data-only file beside it
        assert int(fh.metadata()["step"]) == plan.total_steps // 2
        assert set(fh.keys()) == set(load_checkpoint(last)["model"])
    if old_format:
        _legacy(last)
        assert "model" in torch.load(last, map_location="cpu", weights_only=True)
    done = train_run(plan, corpus, None, tmp_path / "run", resume=True)
    timeless = lambda points: [{k: v for k, v in p.items() if k not in ("wall_time", "tokens_per_s")} for p in points]  # noqa: E731
    assert timeless(done.points) == timeless(reference.points)
    a, b = load_checkpoint(last), load_checkpoint(tmp_path / "ref" / "last.pt")
    assert a["step"] == b["step"] == plan.total_steps
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    assert sorted(p.name for p in (tmp_path / "run").glob("*.safetensors")) == [f"last.step{plan.total_steps}.safetensors"]
    # the final weights file alone rebuilds the model, without the .pt
    model, state = load_model(tmp_path / "run" / f"last.step{plan.total_steps}.safetensors")
    assert state["step"] == plan.total_steps and state["config"]["model"] == b["config"]["model"]
    assert all(torch.equal(v, b["model"][k]) for k, v in model.state_dict().items())


def test_an_old_checkpoint_still_loads(text_corpus, tmp_path):
    cfg = tiny_config(text_corpus, tokens=4000, eval_points=1)
    corpus = prepare_corpus(cfg.corpus)
    train_run(plan_run(cfg, corpus), corpus, None, tmp_path / "run")
    new, _ = load_model(tmp_path / "run")
    _legacy(tmp_path / "run" / "last.pt")
    old, state = load_model(tmp_path / "run")
    assert "weights" not in state
    assert all(torch.equal(v, new.state_dict()[k]) for k, v in old.state_dict().items())
