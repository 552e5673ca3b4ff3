"""The facts-vs-rules probe: the data, and the qualitative facts (bounded recall, improving rule)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalinglab.errors import UserError
from scalinglab.probes.common import probe_optim
from scalinglab.probes.facts_rules import FactsRulesConfig, answers_correct, capacity_alpha, make_data, run_facts_rules
from scalinglab.store import open_store

TINY = dict(items=(32, 128, 512), alphabet=16, d_model=8, epochs=100, min_steps=100, batch_size=64,
            optim=probe_optim(lr=1e-2, warmup=20))


def test_data_facts_are_random_rules_follow_the_rule_and_test_keys_are_unseen():
    cfg = FactsRulesConfig(**TINY)
    data = make_data(cfg)
    A = cfg.alphabet
    facts, rules, test = data.facts.numpy(), data.rules.numpy(), data.test.numpy()
    assert facts.shape == (256, 7) and rules.shape == (256, 7) and test.shape == (cfg.test_items, 7)
    assert len({tuple(k) for k in facts[:, 1:4]}) == len(facts)  # distinct fact keys
    # one hidden mapping per answer position, shared by training and test items
    both = np.concatenate([rules, test])
    for key_col, value_col in ((1, 5), (3, 6)):
        mapping = {}
        for k, v in both[:, [key_col, value_col]]:
            assert mapping.setdefault(k, v) == v
    assert not {tuple(k) for k in test[:, 1:4]} & {tuple(k) for k in rules[:, 1:4]}
    # fact values carry no such mapping: the same first key symbol has many values
    assert max(len(set(facts[facts[:, 1] == s, 5])) for s in range(A)) > 3
    small, n_facts = data.dataset(32, 0.5)
    assert n_facts == 16 and torch.equal(small[:16], data.facts[:16]) and torch.equal(small[16:], data.rules[:16])
    assert torch.equal(make_data(cfg).facts, data.facts)  # seeded
    # a sweep to a larger D extends the data: every fit at a given D sees the same items
    larger = make_data(FactsRulesConfig(**{**TINY, "items": (32, 2048)}))
    assert torch.equal(larger.facts[:256], data.facts) and torch.equal(larger.rules[:256], data.rules)
    assert torch.equal(larger.test, data.test)


def test_answers_correct_scores_both_value_tokens():
    class Oracle(torch.nn.Module):
        """Predicts the next token of a fixed table of rows, exactly."""

        def __init__(self, rows: torch.Tensor, vocab: int) -> None:
            super().__init__()
            self.rows, self.vocab = rows, vocab
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            nxt = self.rows[:, 1:].clone()
            nxt[0, 5] = (nxt[0, 5] + 1) % self.vocab  # the second value token of row 0 is wrong
            return torch.nn.functional.one_hot(nxt, self.vocab).float()

    rows = make_data(FactsRulesConfig(**TINY)).facts[:4]
    assert answers_correct(Oracle(rows, 19), rows).tolist() == [False, True, True, True]


@pytest.mark.parametrize("bad", [dict(items=()), dict(items=(1,)), dict(rule_share=1.5), dict(alphabet=2),
                                 dict(items=(10_000,), alphabet=4), dict(optim=probe_optim(lr=0.0)), dict(epochs=0),
                                 dict(d_model=9)])
def test_bad_settings_are_user_errors(bad):
    with pytest.raises(UserError):
        FactsRulesConfig(**bad)


def test_fact_recall_is_bounded_while_the_rule_keeps_improving(tmp_path):
    db = tmp_path / "s.db"
    result = run_facts_rules(FactsRulesConfig(**TINY), tmp_path / "fr", db=db)
    t = result.table.set_index("n_items")
    params = result.n_params["total"]
    # offered 4x the facts, the model stores far less than 4x the bits: recall has saturated...
    assert t.fact_bits_stored[512] < 2 * t.fact_bits_stored[128]
    assert t.fact_bits_stored[512] < 0.5 * t.n_facts[512] * result.config.bits_per_fact
    assert t.facts_recalled[512] < 0.5 * t.n_facts[512]
    assert (t.fact_bits_stored / params < 3.6).all()  # and never more than the known capacity per parameter
    # ...while the rule, a few hundred bits, is learnt from enough examples and answers unseen keys
    assert t.rule_test_acc[512] > t.rule_test_acc[32] + 0.5
    assert t.rule_test_acc[512] > 0.8
    stored = open_store(db).results("probe:facts-rules")
    assert stored and stored[-1]["max_fact_bits"] == pytest.approx(result.max_fact_bits)
    assert result.capacity_alpha is None and result.notes  # no capacity probe has run in this store
    # a second call loads every fit instead of training again
    again = run_facts_rules(FactsRulesConfig(**TINY), tmp_path / "fr", db=db)
    assert np.allclose(again.table.fact_bits_stored, result.table.fact_bits_stored)
    assert (again.table.wall_time == result.table.wall_time).all()


def test_capacity_alpha_comes_from_the_capacity_probe_result(tmp_path):
    store = open_store(tmp_path / "s.db")
    assert capacity_alpha(store) == (None, None, None)
    store.put_result("probe:capacity", "abc", {"alpha": 1.3, "param_convention": "total", "converged": False})
    alpha, source, convention = capacity_alpha(store)
    assert alpha == 1.3 and convention == "total" and "not converged" in source


def test_cli_errors_are_one_line_and_exit_2(run_cli, tmp_path):
    for args in (("--items", "64,x"), ("--rule-share", "2"), ("--alphabet", "1")):
        code, _, stderr = run_cli("probe", "facts-rules", *args, "--db", tmp_path / "s.db", "--out", tmp_path / "f")
        assert code == 2, args
        assert stderr.strip().startswith("error:") and len(stderr.strip().splitlines()) == 1
