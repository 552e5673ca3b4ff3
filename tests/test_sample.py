"""Text generation: the cached path equals the naive one, seeds reproduce, context cropping, the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from scalinglab.config import ModelSpec, OptimConfig, RunConfig, TrainConfig
from scalinglab.corpus import CorpusConfig, prepare_corpus
from scalinglab.corpus.tokenizers import ByteTokenizer
from scalinglab.errors import UserError
from scalinglab.model import GPT, ModelConfig
from scalinglab.sampling import Sample, sample, sample_model
from scalinglab.store import open_store
from scalinglab.train import plan_run, train_run
from scalinglab.train.checkpoint import load_model, save_checkpoint

CONTEXT = 64  # the tiny run's training sequence length
PROMPT = "def alpha_beta(alpha, beta):\n    return "


@pytest.fixture(scope="module")
def run(text_corpus, tmp_path_factory) -> tuple[Path, Path, str]:
    """A briefly trained byte model recorded in a store: (run directory, store, run id)."""
    root = tmp_path_factory.mktemp("sample-run")
    cfg = RunConfig(corpus=CorpusConfig(source=str(text_corpus)),
                    model=ModelSpec(size=None, n_layer=1, d_model=32, n_head=2),
                    optim=OptimConfig(lr=3e-3),
                    train=TrainConfig(tokens=30_000, batch_size=4, seq_len=CONTEXT, eval_points=2, eval_tokens=1024))
    corpus = prepare_corpus(cfg.corpus)
    result = train_run(plan_run(cfg, corpus), corpus, open_store(root / "s.db"), root / "run")
    return root / "run", root / "s.db", result.run_id


@pytest.fixture(scope="module")
def model(run) -> GPT:
    return load_model(run[0])[0]


def naive_generate(model: GPT, idx: torch.Tensor, n: int, context: int | None = None) -> torch.Tensor:
    """Greedy decoding by a full forward over the (cropped) sequence for every token."""
    with torch.no_grad():
        for _ in range(n):
            window = idx if context is None else idx[:, -context:]
            idx = torch.cat([idx, model(window)[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return idx


def prompt_ids(text: str = PROMPT) -> torch.Tensor:
    return torch.tensor([list(text.encode())], dtype=torch.long)


# --- GPT.generate ----------------------------------------------------------------------------------

def test_cached_greedy_generation_equals_a_full_forward_per_token(model):
    other = "for item in range(7):\n    total += item\n"[: len(PROMPT)]
    idx = torch.cat([prompt_ids(), prompt_ids(other)])  # (2, T): rows decode independently
    cached = model.generate(idx, 20, temperature=0.0)
    assert cached.shape == (2, idx.shape[1] + 20)
    assert torch.equal(cached[:, : idx.shape[1]], idx)
    assert torch.equal(cached, naive_generate(model, idx, 20))
    # the trained model continues its grammar rather than repeating one byte
    assert len(set(cached[0, idx.shape[1] :].tolist())) > 3


def test_prompt_and_continuation_beyond_the_context_crop_to_its_last_tokens(model):
    idx = prompt_ids(PROMPT * 3)  # 120 tokens: longer than the context already
    assert idx.shape[1] > CONTEXT
    cropped = model.generate(idx, 50, temperature=0.0, context=CONTEXT)
    assert cropped.shape == (1, idx.shape[1] + 50)
    assert torch.equal(cropped, naive_generate(model, idx, 50, context=CONTEXT))
    # cropping matters: without it the model would read positions it never trained on
    assert not torch.equal(cropped, model.generate(idx, 50, temperature=0.0))
    # a short prompt whose continuation crosses the limit: incremental first, then cropped
    short = prompt_ids()
    assert short.shape[1] < CONTEXT < short.shape[1] + 60
    out = model.generate(short, 60, temperature=0.0, context=CONTEXT)
    assert torch.equal(out, naive_generate(model, short, 60, context=CONTEXT))


def test_top_k_1_is_greedy_whatever_the_seed_and_temperature(model):
    greedy = model.generate(prompt_ids(), 40, temperature=0.0)
    for seed in (0, 1, 2):
        gen = torch.Generator().manual_seed(seed)
        assert torch.equal(model.generate(prompt_ids(), 40, temperature=1.5, top_k=1, generator=gen), greedy)


def test_top_k_draws_only_among_the_k_likeliest_tokens(model):
    idx = prompt_ids()
    with torch.no_grad():
        allowed = set(torch.topk(model(idx)[0, -1], 3).indices.tolist())
    firsts = {int(model.generate(idx, 1, temperature=5.0, top_k=3, generator=torch.Generator().manual_seed(s))[0, -1])
              for s in range(40)}
    assert firsts <= allowed and len(firsts) > 1


# --- sample / sample_model ---------------------------------------------------------------------------

def test_the_same_seed_gives_the_same_text_and_another_seed_other_text(run):
    first = sample(run[0], PROMPT, 80, temperature=1.0, top_k=None, seed=3)
    again = sample(run[0], PROMPT, 80, temperature=1.0, top_k=None, seed=3)
    other = sample(run[0], PROMPT, 80, temperature=1.0, top_k=None, seed=4)
    assert isinstance(first, Sample)
    assert first.text == again.text
    assert first.text != other.text
    assert first.prompt == PROMPT and not first.text.startswith(PROMPT)
    assert (first.run_id, first.tokens, first.seed, first.top_k) == (run[2], 80, 3, None)
    assert first.step > 0


def test_sample_by_run_id_checkpoint_or_directory_is_the_same_and_crops_to_the_training_length(run):
    run_dir, db, run_id = run
    by_id = sample(run_id, PROMPT * 3, 100, seed=1, db=db)
    by_file = sample(run_dir / "last.pt", PROMPT * 3, 100, seed=1)
    by_dir = sample(run_dir, PROMPT * 3, 100, seed=1)
    assert by_id == by_file == by_dir
    assert len(by_id.text.encode()) == 100  # a byte model: one token per byte (all ASCII here)
    model, state = load_model(run_dir)
    assert state["config"]["train"]["seq_len"] == CONTEXT
    cropped = sample_model(model, ByteTokenizer(), PROMPT * 3, 100, temperature=0.8, top_k=40, seed=1, context=CONTEXT)
    assert by_id.text == cropped


def test_bytes_that_are_not_utf8_decode_with_replacement_characters(tmp_path):
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, d_model=32, n_head=2))  # untrained: near-uniform over all 256 bytes
    save_checkpoint(tmp_path / "random.pt", model=model, optimizer=torch.optim.AdamW(model.parameters()), step=7,
                    config={"model": model.cfg.to_dict(), "train": {"seq_len": CONTEXT}},
                    tokenizer={"spec": {"kind": "byte", "vocab_size": 256}, "json": None})
    result = sample(tmp_path / "random.pt", "x", 200, temperature=1.0, top_k=None)
    assert "\ufffd" in result.text
    assert result.step == 7 and result.run_id == tmp_path.name


def test_sample_model_refuses_bad_settings_with_user_errors(model):
    good = dict(temperature=1.0, top_k=None, seed=0, context=CONTEXT)
    for prompt, tokens, change, needle in [
        ("", 10, {}, "prompt is empty"),
        ("a\udcffb", 10, {}, "UTF-8"),
        (PROMPT, 0, {}, "tokens"),
        (PROMPT, 10, {"temperature": -0.5}, "temperature"),
        (PROMPT, 10, {"temperature": float("nan")}, "temperature"),
        (PROMPT, 10, {"top_k": 0}, "top_k"),
    ]:
        with pytest.raises(UserError, match=needle):
            sample_model(model, ByteTokenizer(), prompt, tokens, **{**good, **change})


# --- the command line --------------------------------------------------------------------------------

def test_cli_samples_a_run_id_from_the_store(run, run_cli):
    run_dir, db, run_id = run
    code, out, err = run_cli("sample", run_id, "--prompt", PROMPT, "--tokens", "60", "--seed", "5", "--db", db)
    assert code == 0, err
    expected = sample(run_id, PROMPT, 60, seed=5, db=db)
    header, body = out.split("\n", 1)
    assert run_id in header and f"step {expected.step:,}" in header
    for setting in ("60 tokens", "temperature 0.8", "top-k 40", "seed 5"):
        assert setting in header
    assert body.rstrip("\n") == (PROMPT + expected.text).rstrip("\n")


def test_cli_user_errors_are_one_line_and_exit_2(run, run_cli, tmp_path):
    run_dir, db, run_id = run
    empty_run = tmp_path / "not-started"
    empty_run.mkdir()
    cases = [
        (["no-such-run", "--prompt", "x", "--db", db], "unknown run id"),
        (["no-such-run", "--prompt", "x", "--db", tmp_path / "missing.db"], "no results store"),
        ([empty_run, "--prompt", "x"], "no checkpoint"),
        ([run_id, "--prompt", "", "--db", db], "prompt is empty"),
        ([run_id, "--prompt", "a\udcffb", "--db", db], "cannot be encoded"),
        ([run_id, "--prompt", "x", "--tokens", "0", "--db", db], "tokens must be"),
        ([run_id, "--prompt", "x", "--temperature", "-1", "--db", db], "temperature must be"),
        ([run_id, "--prompt", "x", "--top-k", "0", "--db", db], "top_k must be"),
    ]
    for args, needle in cases:
        code, out, err = run_cli("sample", *args)
        assert code == 2, (args, err)
        assert out == "", (args, out)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (args, err)
    assert not (tmp_path / "missing.db").exists()  # a lookup never creates a store


def test_a_run_whose_directory_moved_names_the_run(run, run_cli, tmp_path):
    run_dir, db, run_id = run
    store_copy = tmp_path / "copy.db"
    shutil.copy(db, store_copy)
    open_store(store_copy).upsert_run(run_id, out_dir=str(tmp_path / "gone"))
    code, _, err = run_cli("sample", run_id, "--prompt", "x", "--db", store_copy)
    assert code == 2 and run_id in err and "moved or deleted" in err and len(err.strip().splitlines()) == 1
