"""The optimizer every trainer uses: AdamW with weight decay on matrices only."""

from __future__ import annotations

import torch


def param_groups(model: torch.nn.Module, weight_decay: float, decay: str = "matrices") -> list[dict]:
    """decay="matrices": decay the weight matrices; leave norm gains and the (tied) embedding
    undecayed, as is usual for GPTs (decaying embeddings shrinks rare tokens' vectors towards
    zero). decay="all": decay every parameter (as the grokking papers do)."""
    if decay == "all":
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    matrices = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("embed")]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2 or n.startswith("embed")]
    return [{"params": matrices, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def adamw(model: torch.nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float],
          eps: float = 1e-8, decay: str = "matrices") -> torch.optim.Optimizer:
    """AdamW in its fused form, on CPU as on CUDA: one kernel per parameter for the whole update,
    2-4x faster than the loop of ops on a CPU (docs/LOG.md). The same update up to float rounding;
    its state is the loop's, so checkpoints load either way."""
    return torch.optim.AdamW(param_groups(model, weight_decay, decay), lr=lr, betas=betas, eps=eps, fused=True)
