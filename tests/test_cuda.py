"""The CUDA paths: bf16 against float32, compiled against eager, compression on the GPU, resume.

Marked `cuda` and skipped where no GPU is visible (`python -m pytest -m cuda` runs them alone;
`benchmarks/gpu_check.py` runs them first). One test here runs everywhere: an archive coded on a
GPU is refused up front on a machine without one.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scalinglab.compress.archive import ArchiveHeader, compress_bytes, decompress_bytes, load_compressor
from scalinglab.config import ModelSpec, OptimConfig, RunConfig, TrainConfig
from scalinglab.corpus import CorpusConfig, prepare_corpus
from scalinglab.device import cuda_present, place
from scalinglab.errors import UserError
from scalinglab.model import GPT, loss_fn, preset
from scalinglab.store import open_store
from scalinglab.train import plan_run, train_run
from scalinglab.train.engine import read_loss_log

gpu = pytest.mark.skipif(not cuda_present(), reason="needs a CUDA GPU")

# bf16 autocast rounds every matmul's operands to 8 bits of mantissa: METHOD-style relative errors
# of 1e-3..1e-2 are what that costs; beyond them something else is wrong.
BF16_LOSS_RTOL = 1e-2
BF16_GRAD_RTOL = 5e-2


@pytest.fixture(scope="module")
def trained(text_corpus, tmp_path_factory) -> Path:
    """A briefly trained tiny byte model (on the CPU): the compressor's model for these tests."""
    root = tmp_path_factory.mktemp("cuda-model")
    cfg = RunConfig(corpus=CorpusConfig(source=str(text_corpus)),
                    model=ModelSpec(size=None, n_layer=2, d_model=64, n_head=2), optim=OptimConfig(lr=3e-3),
                    train=TrainConfig(tokens=40_000, batch_size=8, seq_len=64, eval_points=2, eval_tokens=1024,
                                      device="cpu"))
    corpus = prepare_corpus(cfg.corpus)
    train_run(plan_run(cfg, corpus), corpus, open_store(root / "s.db"), root / "run")
    return root / "run"


def _batch(vocab: int, batch: int = 8, seq: int = 128, seed: int = 0):
    data = torch.randint(0, vocab, (batch, seq + 1), generator=torch.Generator().manual_seed(seed))
    return data[:, :-1].cuda(), data[:, 1:].cuda()


def _loss_and_grads(model, x, y, dtype):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        loss = loss_fn(model(x), y)
    loss.backward()
    return float(loss.detach()), torch.cat([p.grad.flatten().float() for p in model.parameters()])


@pytest.mark.cuda
@gpu
def test_a_bf16_step_agrees_with_float32_within_the_stated_tolerance():
    place("cuda", "float32")  # TF32 off: the float32 side is the reference
    torch.manual_seed(0)
    model = GPT(preset("1m")).cuda()
    x, y = _batch(model.cfg.vocab_size)
    loss32, grad32 = _loss_and_grads(model, x, y, "float32")
    loss16, grad16 = _loss_and_grads(model, x, y, "bfloat16")
    assert abs(loss16 - loss32) / loss32 < BF16_LOSS_RTOL, (loss16, loss32)
    assert float((grad16 - grad32).norm() / grad32.norm()) < BF16_GRAD_RTOL
    assert torch.isfinite(grad16).all()


@pytest.mark.cuda
@gpu
def test_a_compiled_model_gives_the_eager_loss():
    place("cuda", "float32")
    torch.manual_seed(0)
    model = GPT(preset("1m")).cuda()
    x, y = _batch(model.cfg.vocab_size, seed=1)
    with torch.no_grad():
        eager = float(loss_fn(model(x), y))
        compiled = float(loss_fn(torch.compile(model)(x), y))
    # fused kernels reorder float32 sums: rounding, not a different function
    assert compiled == pytest.approx(eager, rel=1e-4)


@pytest.mark.cuda
@gpu
@pytest.mark.parametrize("case", ["text", "random bytes"])
def test_a_gpu_round_trip_is_exact(trained, text_corpus, case):
    comp = load_compressor(trained)
    data = (Path(text_corpus).read_bytes()[:20_000] if case == "text"
            else np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    archive, enc = compress_bytes(comp, data, batch_size=64, device="cuda")
    assert enc.header.device == "cuda"
    restored, _ = decompress_bytes(comp, archive)
    assert restored == data
    if case == "random bytes":  # stored raw, not expanded
        assert len(archive) < len(data) * 1.01 + 256


@pytest.mark.cuda
@gpu
def test_a_gpu_archive_decodes_exactly_on_the_gpu_in_a_fresh_process(trained, text_corpus, tmp_path):
    """The decoder runs the encoder's computation on the same kind of device (deterministic
    cuBLAS, TF32 off, float32): a new process, a new CUDA context, the same probabilities."""
    comp = load_compressor(trained)
    data = Path(text_corpus).read_bytes()[:8000]
    packed = tmp_path / "a.slz"
    packed.write_bytes(compress_bytes(comp, data, batch_size=32, device="cuda")[0])
    restored = tmp_path / "a.out"
    proc = subprocess.run([sys.executable, "-m", "scalinglab", "decompress", str(trained), str(packed), str(restored),
                           "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert restored.read_bytes() == data


def test_a_gpu_archive_is_refused_up_front_without_a_gpu(trained, text_corpus, monkeypatch):
    """Probabilities computed on a GPU cannot be reproduced by a CPU's kernels: without a GPU the
    archive is refused in one line before any decoding, never decoded into wrong bytes."""
    comp = load_compressor(trained)
    data = Path(text_corpus).read_bytes()[:2000]
    archive, _ = compress_bytes(comp, data, batch_size=8)
    header, offset = ArchiveHeader.unpack(archive)
    as_if_gpu = dataclasses.replace(header, device="cuda").pack() + archive[offset:]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="coded on a CUDA GPU and needs one to decode"):
        decompress_bytes(comp, as_if_gpu)


@pytest.mark.cuda
@gpu
def test_a_resumed_gpu_run_continues_the_loss_curve(text_corpus, tmp_path):
    cfg = RunConfig(corpus=CorpusConfig(source=str(text_corpus)),
                    model=ModelSpec(size=None, n_layer=2, d_model=64, n_head=2), optim=OptimConfig(lr=3e-3),
                    train=TrainConfig(tokens=120 * 8 * 64, batch_size=8, seq_len=64, eval_points=3, eval_tokens=4096,
                                      device="cuda", dtype="bfloat16"))
    corpus = prepare_corpus(cfg.corpus)
    plan = plan_run(cfg, corpus)
    whole = train_run(plan, corpus, open_store(tmp_path / "a.db"), tmp_path / "whole")
    train_run(plan, corpus, open_store(tmp_path / "b.db"), tmp_path / "split", stop_at_step=60)
    resumed = train_run(plan, corpus, open_store(tmp_path / "b.db"), tmp_path / "split", resume=True)
    a, b = read_loss_log(tmp_path / "whole"), read_loss_log(tmp_path / "split")
    assert len(a) == len(b) == plan.total_steps  # the resumed run took up at step 60, not from scratch
    # GPU kernels (atomics in backward) are not bitwise repeatable, so the curves agree closely,
    # not exactly; a lost optimizer state or data position would show as a jump after step 60
    assert np.abs(b[60:65] - a[60:65]).max() < 0.05 * a[60:65].mean()
    assert resumed.points[-1]["val_loss"] == pytest.approx(whole.points[-1]["val_loss"], rel=0.02)
