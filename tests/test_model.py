"""The GPT: parameter counts by convention, FLOPs, shapes, incremental decoding."""

from __future__ import annotations

import pytest
import torch

from scalinglab.errors import UserError
from scalinglab.model import GPT, ModelConfig, count_params, flops_per_token, loss_fn, preset, shape_for_params


def test_parameter_counts_match_a_hand_count():
    cfg = ModelConfig(n_layer=2, d_model=64, n_head=2, mlp_ratio=4.0, vocab_size=256, tie_embeddings=True)
    # per layer: qkv 3*64*64 + out 64*64 + MLP 2*64*256 + two norm gains 2*64
    per_layer = 12288 + 4096 + 32768 + 128
    counts = count_params(cfg)
    assert counts.non_embedding == 2 * per_layer + 64 == 98624
    assert counts.embedding == 256 * 64
    model = GPT(cfg)
    assert sum(p.numel() for p in model.parameters()) == counts.total
    untied = ModelConfig(n_layer=2, d_model=64, n_head=2, vocab_size=256, tie_embeddings=False)
    assert count_params(untied).embedding == 2 * 256 * 64
    assert count_params(untied).non_embedding == counts.non_embedding
    assert sum(p.numel() for p in GPT(untied).parameters()) == count_params(untied).total


def test_flops_per_token_is_six_n_plus_attention():
    cfg = ModelConfig(n_layer=2, d_model=64, n_head=2, vocab_size=256)
    expected = 6 * (98624 + 64 * 256) + 6 * 2 * 128 * 64
    assert flops_per_token(cfg, seq_len=128) == expected


def test_presets_span_10k_to_125m_and_any_n_can_be_asked_for():
    assert 5e3 < count_params(preset("10k")).non_embedding < 2e4
    assert 1.1e8 < count_params(preset("gpt2", vocab_size=50257)).total < 1.3e8
    for target in (1e4, 1e5, 1e6, 1e7):
        got = count_params(shape_for_params(target)).non_embedding
        assert abs(got / target - 1) < 0.3
    with pytest.raises(UserError):
        preset("huge")


def test_bad_shapes_are_refused():
    with pytest.raises(UserError, match="d_model"):
        ModelConfig(n_layer=2, d_model=0, n_head=1)
    with pytest.raises(UserError, match="multiple"):
        ModelConfig(n_layer=2, d_model=30, n_head=4)


def test_incremental_decoding_matches_the_full_forward():
    torch.manual_seed(0)
    model = GPT(preset("30k")).eval()
    idx = torch.randint(0, 256, (3, 17))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache()
        parts = [model.forward_step(idx[:, :5], cache, 0)]
        for pos in range(5, 17):
            parts.append(model.forward_step(idx[:, pos : pos + 1], cache, pos))
    assert torch.allclose(full, torch.cat(parts, dim=1), atol=1e-5)
    # the model is causal: changing a later token leaves earlier logits alone
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 256
    with torch.no_grad():
        assert torch.equal(model(changed)[:, :10], full[:, :10])


def test_the_block_cache_matches_the_full_forward_across_blocks_and_when_reused():
    from scalinglab.model import CACHE_BLOCK

    torch.manual_seed(0)
    model = GPT(preset("10k")).eval()
    T, prompt = 2 * CACHE_BLOCK + 9, CACHE_BLOCK + 3  # a prompt spanning two blocks, then steps into a third
    first, second = torch.randint(0, 256, (2, 2, T))

    def incremental(idx, cache):
        parts = [model.forward_step(idx[:, :prompt], cache, 0)]
        parts += [model.forward_step(idx[:, p : p + 1], cache, p) for p in range(prompt, T)]
        return torch.cat(parts, dim=1)

    with torch.no_grad():
        cache = model.new_cache(capacity=T)
        assert torch.allclose(incremental(first, cache), model(first), atol=1e-5)
        with pytest.raises(ValueError, match="holds"):
            model.forward_step(first[:, :1], cache, T)
        # emptied, the cache's blocks are reused for the next sequence and nothing of the first leaks
        model.reset_cache(cache)
        reused = incremental(second, cache)
        assert torch.equal(reused, incremental(second, model.new_cache(capacity=T)))
        assert torch.allclose(reused, model(second), atol=1e-5)


def test_the_cpu_norm_path_gives_pytorchs_loss_and_gradients(monkeypatch):
    """On a CPU, RMSNorm's gain is folded into the next layer and its backward is written out;
    the loss and every gradient must be what PyTorch's own F.rms_norm path gives."""
    torch.manual_seed(0)
    model = GPT(preset("30k"))
    idx = torch.randint(0, 256, (2, 33))

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(idx[:, :-1]), idx[:, 1:])
        loss.backward()
        return float(loss.detach()), {name: p.grad.clone() for name, p in model.named_parameters()}

    with torch.no_grad():  # gains away from 1, so that folding them matters
        for name, p in model.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
                p.uniform_(0.5, 1.5)
    fast_loss, fast = loss_and_grads()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # the path CUDA and compile take
    ref_loss, ref = loss_and_grads()
    assert fast_loss == pytest.approx(ref_loss, rel=1e-6)
    for name in ref:
        assert torch.allclose(fast[name], ref[name], rtol=1e-4, atol=1e-6), name


def test_a_model_used_in_inference_mode_still_trains():
    torch.manual_seed(0)
    model = GPT(preset("10k"))
    idx = torch.randint(0, 256, (2, 40))
    with torch.inference_mode():
        model.forward_step(idx[:, :8], model.new_cache(), 0)  # builds the rotary tables
    loss = model(idx[:, :-1]).logsumexp(-1).mean()
    loss.backward()  # would fail on tables created as inference tensors
    assert model.embed.weight.grad is not None


def test_rotary_attention_scores_depend_only_on_relative_position():
    from scalinglab.model import Rotary, apply_rotary

    torch.manual_seed(0)
    head_dim, length = 16, 40
    rotations = Rotary(head_dim, 10000.0).tables(length, torch.device("cpu"))[:length]
    q, k = torch.randn(head_dim), torch.randn(head_dim)
    # the same query and key at every position: (1, 1, T, hd)
    rq = apply_rotary(q.expand(1, 1, length, head_dim), rotations)[0, 0]
    rk = apply_rotary(k.expand(1, 1, length, head_dim), rotations)[0, 0]
    scores = rq @ rk.T  # (T, T): query position x key position
    for shift in (1, 7, 20):
        assert torch.allclose(scores[:-shift, :-shift], scores[shift:, shift:], atol=1e-4)
    assert torch.allclose(rq.norm(dim=-1), q.norm().expand(length), atol=1e-5)  # a rotation: norms kept
    assert not torch.allclose(scores[0, 0], scores[0, 5])  # and positions do matter


def test_the_compiled_rotary_form_computes_the_same_rotation():
    from scalinglab.model import Rotary, apply_rotary, rotate_pairs_real

    x = torch.randn(2, 3, 12, 8)
    rotations = Rotary(8, 10000.0).tables(12, torch.device("cpu"))[:12]
    assert torch.allclose(apply_rotary(x, rotations), rotate_pairs_real(x, rotations), atol=1e-6)
