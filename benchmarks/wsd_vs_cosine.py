"""Cooldown branches from one constant-LR trunk vs separate cosine runs (Hägele et al. 2024).

For one N and two D milestones it trains, on the default corpus:
- one trunk at constant LR with a 20% (1-sqrt) cooldown branch ending at each milestone;
- separate cosine runs (the same peak, warmup and batch) to each D, decaying to zero and, as
  Hägele et al.'s baseline does, to 10% of the peak;
- a separate run to each D with the branch's own schedule (warmup, constant, the same cooldown),
  which checks that branching from the trunk changes nothing but the cost.
It prints each branch's val loss against its cosine twins (target: within 1.5% of the cosine run
that decays to zero, the stronger baseline), then the FLOPs of
the branched curve against the separate runs, for these two milestones and for the study's whole
curve of this N (every milestone from 5 tokens/param up to the larger D; target <= 0.6x).

    python benchmarks/wsd_vs_cosine.py                    # N = 30k preset, D = 20 and 80 tokens/param
    python benchmarks/wsd_vs_cosine.py --size 100k --tpp 20 160 --seeds 0 1
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from scalinglab.corpus import CorpusConfig, prepare_corpus
from scalinglab.store import open_store
from scalinglab.study.grid import Grid, Milestone, StudyConfig, parse_budget, size_plan
from scalinglab.study.runner import StudyRuns, Task, build_tasks, run_config, run_tasks
from scalinglab.train.loop import RunPlan
from scalinglab.train.schedules import Schedule


def separate_task(grid: Grid, milestone: Milestone, out: Path, group: str, schedule: Schedule) -> Task:
    """A run from scratch to the milestone's D with its own schedule (kind: the schedule's)."""
    size = grid.sizes[0]
    plan = RunPlan(
        config=run_config(grid, size, milestone.end_step * size.batch_tokens, schedule.kind),
        model=size.model, batch_size=size.batch_size, seq_len=size.seq_len, lr=size.lr, schedule=schedule,
        eval_steps=[milestone.end_step], kind=schedule.kind, group=group, corpus_key=grid.corpus_key,
        name=f"{group}/{schedule.kind}{schedule.min_lr_frac:g}-{milestone.tpp:g}tpp",
    )
    return Task(key=plan.run_id, kind=schedule.kind, plan=plan, out_dir=out / "runs" / plan.run_id, size=size.label)


def cosine_task(grid: Grid, milestone: Milestone, out: Path, group: str, floor: float) -> Task:
    size = grid.sizes[0]
    schedule = Schedule("cosine", total_steps=milestone.end_step, warmup_steps=size.warmup, min_lr_frac=floor)
    return separate_task(grid, milestone, out, group, schedule)


def wsd_task(grid: Grid, milestone: Milestone, out: Path, group: str) -> Task:
    """The same cooldown as the branch, trained from scratch: checks the branching itself."""
    size = grid.sizes[0]
    schedule = Schedule("wsd", total_steps=milestone.end_step, warmup_steps=size.warmup,
                        decay_start=milestone.start_step, shape=grid.config.cooldown_shape)
    return separate_task(grid, milestone, out, group, schedule)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="30k")
    parser.add_argument("--tpp", nargs=2, type=float, default=[20.0, 80.0], help="the two milestones, tokens/param")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cosine-floors", nargs="+", type=float, default=[0.0, 0.1],
                        help="final LR of the cosine runs as a fraction of the peak; the first is the target's baseline")
    parser.add_argument("--out", type=Path, default=None, help="keep runs here (default: a temporary folder)")
    args = parser.parse_args()

    corpus = prepare_corpus(CorpusConfig())
    out = args.out or Path(tempfile.mkdtemp(prefix="wsd-vs-cosine-"))
    db = out / "bench.db"
    out.mkdir(parents=True, exist_ok=True)
    open_store(db)
    rows = []
    for seed in args.seeds:
        cfg = StudyConfig(name=f"wsd-vs-cosine-s{seed}", sizes=[args.size], budget=None, workers=args.workers, seed=seed)
        size = size_plan(cfg, args.size, corpus.vocab_size, doublings=0)
        # exactly the two milestones asked for, placed as the study would place them
        bt = size.batch_tokens
        milestones = []
        for tpp in sorted(args.tpp):
            end = round(tpp * size.n / bt)
            milestones.append(Milestone(tpp=tpp, end_step=end, start_step=end - round(cfg.cooldown_frac * end)))
        size.milestones = milestones
        grid = Grid(config=cfg, sizes=[size], budget=parse_budget(None), unique_train_tokens=corpus.unique_train_tokens,
                    corpus_key=corpus.key)
        runs = build_tasks(grid, cfg.name, out)
        separate = [cosine_task(grid, m, out, cfg.name, floor) for floor in args.cosine_floors for m in milestones]
        separate += [wsd_task(grid, m, out, cfg.name) for m in milestones]
        runs = StudyRuns(tasks=runs.tasks + separate, trunks=runs.trunks)
        run_tasks(runs, corpus, db, args.workers)
        store = open_store(db)
        final = {(t.kind, t.plan.schedule.min_lr_frac if t.kind == "cosine" else None, t.plan.total_steps):
                 store.points(t.key)[-1]["val_loss"] for t in runs.tasks if t.kind != "trunk"}
        for m in milestones:
            rows.append((seed, m.tpp, final[("branch", None, m.end_step)], final[("wsd", None, m.end_step)],
                         [final[("cosine", floor, m.end_step)] for floor in args.cosine_floors]))

        # FLOPs: the two milestones, and the study's whole curve for this N up to the larger D
        fpt = size.flops_per_token
        branched = (size.trunk_steps + sum(m.branch_steps for m in milestones)) * bt * fpt
        separate = sum(m.end_step for m in milestones) * bt * fpt
        doublings = 0
        while 20 * 2**doublings < max(args.tpp):
            doublings += 1
        whole = size_plan(cfg, args.size, corpus.vocab_size, doublings)
        whole.milestones = [m for m in whole.milestones if m.tpp <= max(args.tpp) * (1 + 1e-9)]
        whole_ratio = whole.work_steps / whole.separate_runs_steps

    print(f"N = {size.n:,} non-embedding ({args.size}), batch {size.batch_size}x{size.seq_len}, lr {size.lr:.2e}, "
          f"warmup {size.warmup}, cooldown {cfg.cooldown_frac:.0%} {cfg.cooldown_shape}")
    heads = "".join(f" {'cosine->' + format(f, 'g'):>11} {'branch/it':>9}" for f in args.cosine_floors)
    print(f"{'seed':>4} {'tokens/param':>12} {'branch val':>10} {'separate WSD':>12} {'branch/it':>9}{heads}")
    worst, worst_wsd = 0.0, 0.0
    for seed, tpp, branch, wsd, cosines in rows:
        cells = "".join(f" {c:>11.4f} {branch / c - 1:>+9.2%}" for c in cosines)
        worst = max(worst, abs(branch / cosines[0] - 1))
        worst_wsd = max(worst_wsd, abs(branch / wsd - 1))
        print(f"{seed:>4} {tpp:>12g} {branch:>10.4f} {wsd:>12.4f} {branch / wsd - 1:>+9.2%}{cells}")
    print(f"largest |branch / separate WSD run - 1| = {worst_wsd:.2%} (branching changes nothing but the cost)")
    verdict = "PASS" if worst <= 0.015 else (
        "FAIL: the branches beat the cosine runs by more than that" if all(b < c[0] for _, _, b, _, c in rows)
        else "FAIL")
    print(f"largest |branch / cosine->{args.cosine_floors[0]:g} - 1| = {worst:.2%} (target <= 1.5%): {verdict}")
    print(f"FLOPs, these two milestones: branched / separate cosine = {branched / separate:.3f}x")
    print(f"FLOPs, the study's whole curve for this N ({len(whole.milestones)} milestones, 5..{max(args.tpp):g} "
          f"tokens/param): {whole_ratio:.3f}x (target <= 0.6x): {'PASS' if whole_ratio <= 0.6 else 'FAIL'}")
    print(f"runs kept in {out}")


if __name__ == "__main__":
    main()
