"""The GPT: pre-norm, RMSNorm, rotary positions, bias-free linears, tied or untied embeddings.

The model knows nothing of devices, precision or parallelism; the training loop places and
wraps it. Besides `forward` it offers an incremental path with a key/value cache
(`forward_step`), which the compressor uses so that encoder and decoder compute the same
probabilities through the same code.

Parameter counts follow one convention, stored with every result:
- embedding: the token embedding plus, when untied, the output projection;
- non-embedding: everything else (attention, MLP, norms). "N" in scaling laws means this count.
FLOPs per training token: 6 x (non-embedding + d_model x vocab, the output projection's matmul)
plus 6 x n_layer x seq_len x d_model for attention scores and values (Kaplan et al. 2020,
forward 2x and backward 4x, without causal halving).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from scalinglab.errors import UserError

PARAM_CONVENTION = "non_embedding"


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a GPT.

    n_layer: transformer blocks. d_model: residual width. n_head: attention heads (d_model must
    divide evenly; head size must be even for rotary). mlp_ratio: MLP hidden = mlp_ratio x d_model.
    vocab_size: set from the corpus's tokenizer. tie_embeddings: share the input embedding and
    output projection. rope_base: rotary frequency base.
    """

    n_layer: int = 2
    d_model: int = 64
    n_head: int = 4
    mlp_ratio: float = 4.0
    vocab_size: int = 256
    tie_embeddings: bool = True
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("n_layer", "d_model", "n_head", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_head:
            raise UserError(f"d_model ({self.d_model}) must be a multiple of n_head ({self.n_head})")
        if (self.d_model // self.n_head) % 2:
            raise UserError(f"head size d_model/n_head = {self.d_model // self.n_head} must be even (rotary)")
        if not (self.mlp_ratio > 0 and math.isfinite(self.mlp_ratio)):
            raise UserError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def d_mlp(self) -> int:
        return int(round(self.mlp_ratio * self.d_model))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ParamCounts:
    total: int
    embedding: int
    non_embedding: int

    def by_convention(self, convention: str = PARAM_CONVENTION) -> int:
        return {"non_embedding": self.non_embedding, "total": self.total, "embedding": self.embedding}[convention]


def count_params(cfg: ModelConfig) -> ParamCounts:
    """Parameter counts from the shape alone (matches `sum(p.numel())` of the built model)."""
    c, f = cfg.d_model, cfg.d_mlp
    per_layer = 4 * c * c + 2 * c * f + 2 * c  # qkv + out, MLP in + out, two norm gains
    non_emb = cfg.n_layer * per_layer + c  # + final norm gain
    emb = cfg.vocab_size * c * (1 if cfg.tie_embeddings else 2)
    return ParamCounts(total=non_emb + emb, embedding=emb, non_embedding=non_emb)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul parameters + the attention term (see module doc)."""
    matmul_params = count_params(cfg).non_embedding + cfg.d_model * cfg.vocab_size
    return 6.0 * matmul_params + 6.0 * cfg.n_layer * seq_len * cfg.d_model


class Rotary(nn.Module):
    """Rotary position embedding: per position, unit complex numbers e^{i·t·θ_j}, built lazily
    for the longest position seen."""

    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: tuple[int, torch.device, torch.Tensor] | None = None

    def tables(self, length: int, device: torch.device) -> torch.Tensor:
        """(length', head_dim/2) complex64 rotations, length' >= length."""
        if self._cache is None or self._cache[0] < length or self._cache[1] != device:
            # grown by doubling: the incremental path asks for one more position a step
            size = max(length, 64, 2 * self._cache[0] if self._cache else 0)
            # Built outside inference mode: tables first made under torch.inference_mode() (by
            # the compressor) would otherwise break a later training step on the same model.
            with torch.inference_mode(False), torch.no_grad():
                t = torch.arange(size, dtype=torch.float32, device=device)
                freqs = torch.outer(t, self.inv_freq.to(device))  # (T, hd/2)
                self._cache = (size, device, torch.polar(torch.ones_like(freqs), freqs))
        return self._cache[2]


def apply_rotary(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, T, hd) by rotations (T, hd/2): adjacent pairs of each head's dims
    are complex numbers, multiplied by e^{i·t·θ}. Computed in float32, returned in x's dtype.

    Eagerly it is one complex multiply, forward and backward: a third of the time of the
    real-valued form on a CPU. Under torch.compile the real-valued form (the same function),
    which the compiler fuses and which needs no complex support."""
    if torch.compiler.is_compiling():
        return rotate_pairs_real(x, rotations)
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rotations).flatten(-2).to(x.dtype)


def rotate_pairs_real(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """`apply_rotary` in real arithmetic."""
    re, im = x.float().reshape(*x.shape[:-1], -1, 2).unbind(-1)
    cos, sin = rotations.real, rotations.imag
    return torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1).flatten(-2).to(x.dtype)


class RMSNorm(nn.Module):
    """x / rms(x) x gain, with nn.RMSNorm's parameter name and default eps (float32's epsilon).

    Every RMSNorm here feeds a linear layer, so `split` hands the layer the normalised x and the
    gain separately, and the layer multiplies its weight by the gain (`gained`):
    (x̂·w) @ W^T = x̂ @ (W·w)^T. On a CPU, without compilation, that saves the passes over the
    activations that applying the gain costs forward and backward (the weight is 3-12x smaller
    than a batch's activations), and the normalisation's backward is written out in closed form
    (`_Normalize`): PyTorch's RMSNorm is composed there of ~6 ops forward and ~10 backward, each a
    pass over the activations. On CUDA and under torch.compile, which fuse it, it is `F.rms_norm`
    with its gain. Both compute the same function up to float rounding."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(normalised x, the gain still to apply), or (the finished norm, None)."""
        eps = torch.finfo(x.dtype).eps
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return F.rms_norm(x, (x.shape[-1],), self.weight, eps), None
        return _Normalize.apply(x, eps), self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed, gain = self.split(x)
        return normed if gain is None else normed * gain


def gained(weight: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
    """A linear layer's weight (out, in) with an RMSNorm's gain folded into its input columns."""
    return weight if gain is None else weight * gain


class _Normalize(torch.autograd.Function):
    """x̂ = x·r, r = 1/sqrt(mean(x²) + eps), with its backward in closed form:
    dL/dx = r·(g − x̂·mean(g·x̂)). Two passes over the activations forward, four backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        # the norm in one fused pass (half the time of squaring, then averaging), then per row
        rstd = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        normed = x * rstd
        ctx.save_for_backward(normed, rstd)
        return normed

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        normed, rstd = ctx.saved_tensors
        dot = (grad * normed).mean(-1, keepdim=True)
        return torch.addcmul(grad, normed, dot, value=-1).mul_(rstd), None


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, gain: torch.Tensor | None, rotations: torch.Tensor,
                cache: dict | None = None) -> torch.Tensor:
        B, T, C = x.shape
        qk, v = F.linear(x, gained(self.qkv.weight, gain)).split([2 * C, C], dim=2)
        # queries and keys rotated together, in one op, heads first: the rotation writes them
        # out contiguous, as attention reads them, and their gradients come back contiguous
        qk = apply_rotary(qk.view(B, T, 2 * self.n_head, self.head_dim).transpose(1, 2), rotations)
        q, k = qk.split(self.n_head, dim=1)  # (B, H, T, hd) each
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = attend_cached(q, k, v, cache)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


# Positions per block of the key/value cache (see `attend_cached`).
CACHE_BLOCK = 64


def attend_cached(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: dict) -> torch.Tensor:
    """Incremental attention: the new queries q (B, H, T, hd) see every cached position and,
    among themselves, only earlier ones; k and v (B, H, T, hd) join the cache first.

    The cache holds keys and values in blocks of `CACHE_BLOCK` positions, each block one
    contiguous (B, H, block, hd) tensor, allocated when first reached. A one-query step is
    memory-bound (it reads its row's whole cache for one multiply-add per number), and batched
    matmuls read contiguous blocks at 1.3x the speed of a prefix sliced from one long buffer
    (docs/LOG.md). The last block is read whole; its unwritten positions are masked out, and
    blocks start zeroed so that a masked position's value is 0, never NaN. `cache["capacity"]`,
    when set, is the most positions the cache may hold; `GPT.reset_cache` empties it for reuse."""
    B, H, T, hd = q.shape
    past = cache.get("length", 0)
    if cache.get("capacity") and past + T > cache["capacity"]:
        raise ValueError(f"the cache holds {cache['capacity']} positions; {past + T} asked for")
    keys, values = cache.setdefault("k", []), cache.setdefault("v", [])
    pos = past
    while pos < past + T:  # a step writes one position; a prompt may span blocks
        block, offset = divmod(pos, CACHE_BLOCK)
        if block == len(keys):
            keys.append(_zeroed_block(cache.get("spare_k"), k))
            values.append(_zeroed_block(cache.get("spare_v"), v))
        count = min(CACHE_BLOCK - offset, past + T - pos)
        keys[block][:, :, offset : offset + count] = k[:, :, pos - past : pos - past + count]
        values[block][:, :, offset : offset + count] = v[:, :, pos - past : pos - past + count]
        pos += count
    cache["length"] = length = past + T
    n = -(-length // CACHE_BLOCK)  # blocks holding positions
    # Two matmuls rather than SDPA: for one query over a long cache, CPU SDPA's flash kernel
    # was ~10% slower per step (docs/compress.md). `forward` keeps SDPA.
    q = (q * hd**-0.5).reshape(B * H, T, hd)  # batched matmuls run on (batch, rows, columns)
    att = torch.cat([torch.bmm(q, keys[i].view(B * H, CACHE_BLOCK, hd).transpose(1, 2)) for i in range(n)], dim=2)
    seen = torch.arange(n * CACHE_BLOCK, device=q.device) <= torch.arange(past, length, device=q.device)[:, None]
    att = att.masked_fill_(~seen, float("-inf")).softmax(dim=-1)  # (B·H, T, n·block)
    y = torch.bmm(att[..., :CACHE_BLOCK], values[0].view(B * H, CACHE_BLOCK, hd))
    for i in range(1, n):
        y = y.baddbmm_(att[..., i * CACHE_BLOCK : (i + 1) * CACHE_BLOCK], values[i].view(B * H, CACHE_BLOCK, hd))
    return y.view(B, H, T, hd)


def _zeroed_block(spares: list | None, like: torch.Tensor) -> torch.Tensor:
    """A zeroed (B, H, CACHE_BLOCK, hd) block for keys or values like `like`: a spare one of that
    shape when there is one. Reusing memory already mapped spares a page fault a 4 kB page,
    which costs more than the zeroing."""
    B, H, _, hd = like.shape
    while spares:
        spare = spares.pop()
        if spare.shape == (B, H, CACHE_BLOCK, hd) and spare.dtype == like.dtype and spare.device == like.device:
            return spare.zero_()
    return like.new_zeros(B, H, CACHE_BLOCK, hd)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.down = nn.Linear(cfg.d_mlp, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
        return self.down(F.gelu(F.linear(x, gained(self.up.weight, gain))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rotations: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = x + self.attn(*self.norm1.split(x), rotations, cache)
        return x + self.mlp(*self.norm2.split(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # GPT-2 style: N(0, 0.02), residual projections scaled down by sqrt(2 x n_layer) so the
        # residual stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            std = 0.02
            if name.endswith("proj.weight") or name.endswith("down.weight"):
                std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
            nn.init.normal_(p, mean=0.0, std=std)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        h, gain = self.norm.split(h)
        return F.linear(h, gained(self.embed.weight if self.head is None else self.head.weight, gain))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, V)."""
        T = idx.shape[1]
        rotations = self.rotary.tables(T, idx.device)[:T]
        x = self.embed(idx)  # (B, T, C)
        for block in self.blocks:
            x = block(x, rotations)
        return self.logits(x)

    def new_cache(self, capacity: int | None = None) -> list[dict]:
        """An empty key/value cache for `forward_step` (`attend_cached`); `capacity`, when given,
        is the most positions it may hold."""
        return [{"capacity": capacity} if capacity else {} for _ in self.blocks]

    @staticmethod
    def reset_cache(cache: list[dict]) -> None:
        """Empty a cache for a new sequence, keeping its blocks to reuse."""
        for layer in cache:
            layer["spare_k"] = layer.get("spare_k", []) + layer.pop("k", [])
            layer["spare_v"] = layer.get("spare_v", []) + layer.pop("v", [])
            layer["length"] = 0

    def forward_step(self, idx: torch.Tensor, cache: list[dict], pos: int) -> torch.Tensor:
        """Incremental forward: idx (B, t) at positions pos..pos+t-1 -> logits (B, t, V)."""
        t = idx.shape[1]
        rotations = self.rotary.tables(pos + t, idx.device)[pos : pos + t]
        x = self.embed(idx)
        for block, block_cache in zip(self.blocks, cache):
            x = block(x, rotations, block_cache)
        return self.logits(x)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, context: int | None = None) -> torch.Tensor:
        """Continue idx (B, T) by `max_new_tokens` sampled tokens -> (B, T + max_new_tokens).

        temperature 0 picks the most likely token (greedy); otherwise logits are divided by
        `temperature` and, with `top_k`, all but the k most likely tokens are dropped before
        sampling. Draws come from `generator` (on the model's device), so a seeded generator
        gives the same tokens every time. `context`: the most tokens the model sees at once
        (its training length); each prediction conditions on the last `context` tokens.
        """
        if idx.dim() != 2 or idx.shape[1] == 0:
            raise ValueError(f"idx must be (B, T) with T >= 1, got shape {tuple(idx.shape)}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if context is not None and context < 1:
            raise ValueError(f"context must be >= 1, got {context}")
        out = idx
        if max_new_tokens == 0:
            return out
        window = out if context is None else out[:, -context:]
        # Buffers sized once for every position the cache will hold: one in-place write a step.
        capacity = window.shape[1] + max_new_tokens - 1
        cache = self.new_cache(capacity if context is None else min(capacity, context))
        logits = self.forward_step(window, cache, 0)[:, -1]  # (B, V)
        pos = window.shape[1]
        for i in range(max_new_tokens):
            nxt = self._pick(logits, temperature, top_k, generator)  # (B, 1)
            out = torch.cat([out, nxt], dim=1)
            if i == max_new_tokens - 1:
                break
            if context is None or pos < context:
                logits = self.forward_step(nxt, cache, pos)[:, -1]
                pos += 1
            else:
                # The window is full: positions past `context` were never trained, so from here
                # each prediction reads the last `context` tokens afresh, at positions 0..context-1.
                logits = self(out[:, -context:])[:, -1]
        return out

    @staticmethod
    def _pick(logits: torch.Tensor, temperature: float, top_k: int | None,
              generator: torch.Generator | None) -> torch.Tensor:
        """The next token (B, 1) from last-position logits (B, V)."""
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits.float() / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            # exactly k survivors, even where logits tie
            values, indices = torch.topk(logits, top_k, dim=-1)  # (B, k)
            logits = torch.full_like(logits, float("-inf")).scatter_(1, indices, values)
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in nats, computed in float32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


# --- sizes -----------------------------------------------------------------------------------

def default_heads(d_model: int) -> int:
    head_dim = 64 if d_model >= 256 else 32 if d_model >= 64 else 16
    return max(1, d_model // head_dim)


# Named presets from ~10k to ~125M parameters. Names give the approximate non-embedding count;
# "gpt2" is GPT-2 small's shape (124M total with a 50257-token vocabulary).
PRESETS: dict[str, dict] = {
    "10k": dict(n_layer=1, d_model=28, n_head=1),
    "30k": dict(n_layer=2, d_model=32, n_head=2),
    "100k": dict(n_layer=2, d_model=64, n_head=2),
    "300k": dict(n_layer=3, d_model=96, n_head=3),
    "1m": dict(n_layer=4, d_model=144, n_head=4),
    "3m": dict(n_layer=6, d_model=208, n_head=4),
    "10m": dict(n_layer=8, d_model=320, n_head=5),
    "30m": dict(n_layer=10, d_model=512, n_head=8),
    "gpt2": dict(n_layer=12, d_model=768, n_head=12),
}


def preset(name: str, vocab_size: int = 256, **overrides) -> ModelConfig:
    key = name.lower()
    if key not in PRESETS:
        raise UserError(f"unknown size {name!r}; choose one of {', '.join(PRESETS)} or pass --params N")
    return ModelConfig(**{**PRESETS[key], "vocab_size": vocab_size, **overrides})


def shape_for_params(target: float, vocab_size: int = 256, mlp_ratio: float = 4.0, tie_embeddings: bool = True) -> ModelConfig:
    """The shape whose non-embedding count is closest to `target` (in log space).

    Candidates keep an aspect ratio d_model / n_layer between 16 and 128 (the range where loss
    depends little on shape, Kaplan et al. 2020) with d_model a multiple of 8 and heads of 16-64
    dims; among near-equal counts the shape closest to aspect 48 wins.
    """
    if not (target > 0 and math.isfinite(target)):
        raise UserError(f"--params must be a positive number, got {target}")
    best: tuple[float, float, ModelConfig] | None = None
    for n_layer in range(1, 49):
        for d_model in range(16, 4097, 8):
            aspect = d_model / n_layer
            if not 16 <= aspect <= 128 and not (n_layer == 1 and d_model <= 128):
                continue
            n_head = default_heads(d_model)
            if d_model % n_head or (d_model // n_head) % 2:
                continue
            cfg = ModelConfig(n_layer=n_layer, d_model=d_model, n_head=n_head, mlp_ratio=mlp_ratio,
                              vocab_size=vocab_size, tie_embeddings=tie_embeddings)
            miss = abs(math.log(count_params(cfg).non_embedding / target))
            key = (round(miss, 2), abs(math.log(aspect / 48)))
            if best is None or key < best[:2]:
                best = (*key, cfg)
    assert best is not None
    return best[2]
