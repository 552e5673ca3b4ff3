"""Training throughput: scalinglab's training step against a minimal plain-PyTorch reference.

The reference is a nanoGPT-style GPT (learned positions, LayerNorm, GELU MLP, tied head,
causal SDPA) with a plain AdamW loop, written here so nothing of scalinglab is in it. Both run
identical shapes (layers, width, heads, vocabulary, batch, sequence length) in the same process,
interleaved in rounds so that machine noise hits both alike. Printed: tokens/s of each and the
ratio (scalinglab / reference), the median of the rounds' ratios with their quartiles; the target
on CPU is >= 1.0x per process at every preset.

    python benchmarks/train_throughput.py                 # the presets 10k..10m on CPU, ~12 minutes
    python benchmarks/train_throughput.py --sizes 100k    # one size
    python benchmarks/train_throughput.py --gpt2          # + GPT-2 124M bf16 compiled (CUDA), MFU
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from scalinglab.config import ModelSpec, RunConfig, TrainConfig
from scalinglab.device import place
from scalinglab.model import GPT, count_params, flops_per_token, preset
from scalinglab.train.data import BatchSampler
from scalinglab.train.loop import RunPlan, make_optimizer, train_step
from scalinglab.train.schedules import Schedule

PEAK_BF16 = 989e12  # H100/H200 dense bf16 FLOP/s


# --- the reference: a nanoGPT-style model and loop -------------------------------------------

class RefBlock(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.fc, self.proj = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.c_proj(y)
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class RefGPT(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, T: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(T, d)
        self.blocks = nn.ModuleList(RefBlock(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, bias=False)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T


def reference_step(model, opt, tokens: np.ndarray, B: int, T: int, rng: np.random.Generator, device) -> float:
    starts = rng.integers(0, len(tokens) - T - 1, B)
    batch = torch.from_numpy(np.stack([tokens[s : s + T + 1] for s in starts]).astype(np.int64)).to(device)
    logits = model(batch[:, :-1])
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss.detach())


# --- timing -----------------------------------------------------------------------------------

def time_steps(step, n: int, sync) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    return time.perf_counter() - t0


def compare(name: str, batch: int, seq_len: int, rounds: int, steps: int, device: str, dtype: str,
            compile_model: bool = False, vocab: int = 256) -> dict:
    placement = place(device, dtype, 1)
    dev = placement.device
    cfg = preset(name, vocab_size=vocab)
    tokens = np.random.default_rng(0).integers(0, vocab, 2_000_000).astype(np.uint16)
    run_cfg = RunConfig(model=ModelSpec(size=name), train=TrainConfig(batch_size=batch, seq_len=seq_len, device=device))
    plan = RunPlan(config=run_cfg, model=cfg, batch_size=batch, seq_len=seq_len, lr=1e-3,
                   schedule=Schedule("constant", total_steps=10**9, warmup_steps=0), eval_steps=[])

    torch.manual_seed(0)
    ours = GPT(cfg).to(dev)
    ours_run = torch.compile(ours) if compile_model else ours
    ours_opt = make_optimizer(ours, plan)
    sampler = BatchSampler(tokens, seq_len, batch, seed=0)
    state = {"step": 0}

    def our_step():
        train_step(ours_run, ours_opt, *sampler.batch(state["step"]), 1e-3, 1.0, placement)
        state["step"] += 1

    torch.manual_seed(0)
    ref = RefGPT(vocab, cfg.d_model, cfg.n_layer, cfg.n_head, seq_len).to(dev)
    ref_run = torch.compile(ref) if compile_model else ref
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95),
                                fused=dev.type == "cuda" or None)
    rng = np.random.default_rng(0)
    autocast = (torch.autocast(device_type=dev.type, dtype=placement.dtype) if placement.autocast else None)

    def ref_step():
        if autocast is not None:
            with torch.autocast(device_type=dev.type, dtype=placement.dtype):
                reference_step(ref_run, ref_opt, tokens, batch, seq_len, rng, dev)
        else:
            reference_step(ref_run, ref_opt, tokens, batch, seq_len, rng, dev)

    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    for _ in range(3 if not compile_model else 10):  # warm up allocators (and compilation)
        our_step()
        ref_step()
    ours_t, ref_t = [], []
    for _ in range(rounds):  # interleaved: noise hits both alike
        ours_t.append(time_steps(our_step, steps, sync))
        ref_t.append(time_steps(ref_step, steps, sync))
    tok = batch * seq_len * steps
    ours_tps, ref_tps = tok / statistics.median(ours_t), tok / statistics.median(ref_t)
    # each round's two timings share the machine's state of the moment, so the ratio is taken per
    # round (paired), its median reported with the quartiles as the noise
    paired = statistics.quantiles([r / o for o, r in zip(ours_t, ref_t)], n=4) if rounds > 1 else [ref_t[0] / ours_t[0]] * 3
    n = count_params(cfg)
    return {
        "size": name, "params": n.total, "non_embedding": n.non_embedding, "batch": f"{batch}x{seq_len}",
        "ours": ours_tps, "ref": ref_tps, "ratio": paired[1], "quartiles": (paired[0], paired[2]),
        "flops_per_token": flops_per_token(cfg, seq_len),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["10k", "30k", "100k", "300k", "1m", "3m", "10m"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=12, help="steps per round at 100k (fewer for larger models)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--gpt2", action="store_true", help="add GPT-2 124M, bf16, torch.compile (CUDA only)")
    args = parser.parse_args()

    placement = place(args.device, "auto", 1)
    print(f"device: {placement.describe()}  torch {torch.__version__}  threads {torch.get_num_threads()}")
    print(f"{'size':>6} {'params':>10} {'batch':>8} {'scalinglab tok/s':>17} {'reference tok/s':>16} {'ratio':>6}"
          f"  (quartiles of the {args.rounds} rounds' ratios)")
    for name in args.sizes:
        # fewer steps per round for big models so each size takes seconds, not minutes
        steps = max(2, int(round(args.steps / max(1, math.sqrt(count_params(preset(name)).non_embedding / 1e5)))))
        r = compare(name, args.batch, args.seq_len, args.rounds, steps, args.device, "float32")
        print(f"{r['size']:>6} {r['params']:>10,} {r['batch']:>8} {r['ours']:>17,.0f} {r['ref']:>16,.0f} {r['ratio']:>5.2f}x"
              f"  ({r['quartiles'][0]:.2f}-{r['quartiles'][1]:.2f})", flush=True)
    if args.gpt2:
        if placement.device.type != "cuda":
            print("gpt2: skipped, no CUDA GPU on this machine")
            return
        r = compare("gpt2", 16, 1024, 3, 10, "cuda", "bfloat16", compile_model=True, vocab=50304)
        mfu = r["ours"] * r["flops_per_token"] / PEAK_BF16
        ref_mfu = r["ref"] * r["flops_per_token"] / PEAK_BF16
        print(f"  gpt2 {r['params']:>10,} {r['batch']:>8} {r['ours']:>17,.0f} {r['ref']:>16,.0f} {r['ratio']:>5.2f}x"
              f"  MFU {mfu:.1%} (reference {ref_mfu:.1%}) of {PEAK_BF16 / 1e12:.0f} TFLOP/s")


if __name__ == "__main__":
    main()
