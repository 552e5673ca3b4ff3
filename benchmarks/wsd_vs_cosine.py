"""Cooldown branches from one constant-LR trunk vs separate cosine runs (Hägele et al. 2024).

For one N and two D milestones it trains, on the default corpus:
- one trunk at constant LR with a 20% (1-sqrt) cooldown branch ending at each milestone;
- a separate cosine run (to 10% of the peak LR, the same peak, warmup and batch) to each D.
It prints each branch's val loss against its cosine twin (target: within 1.5%), then the FLOPs of
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
from scalinglab.study.runner import StudyRuns, Task, run_config, build_tasks, run_tasks
from scalinglab.train.loop import RunPlan
from scalinglab.train.schedules import Schedule


def cosine_task(grid: Grid, milestone: Milestone, out: Path, group: str) -> Task:
    size = grid.sizes[0]
    plan = RunPlan(
        config=run_config(grid, size, milestone.end_step * size.batch_tokens, "cosine"),
        model=size.model, batch_size=size.batch_size, seq_len=size.seq_len, lr=size.lr,
        schedule=Schedule("cosine", total_steps=milestone.end_step, warmup_steps=size.warmup, min_lr_frac=0.1),
        eval_steps=[milestone.end_step], kind="cosine", name=f"{group}/cosine-{milestone.tpp:g}tpp", group=group,
    )
    return Task(key=plan.run_id, kind="cosine", plan=plan, out_dir=out / "runs" / plan.run_id, size=size.label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="30k")
    parser.add_argument("--tpp", nargs=2, type=float, default=[20.0, 80.0], help="the two milestones, tokens/param")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--workers", type=int, default=2)
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
        grid = Grid(config=cfg, sizes=[size], budget=parse_budget(None), unique_train_tokens=corpus.unique_train_tokens)
        runs = build_tasks(grid, cfg.name, out)
        runs = StudyRuns(tasks=runs.tasks + [cosine_task(grid, m, out, cfg.name) for m in milestones], trunks=runs.trunks)
        run_tasks(runs, corpus, db, args.workers)
        store = open_store(db)
        final = {t.kind + str(t.plan.total_steps): store.points(t.key)[-1]["val_loss"] for t in runs.tasks if t.kind != "trunk"}
        for m in milestones:
            rows.append((seed, m.tpp, final[f"branch{m.end_step}"], final[f"cosine{m.end_step}"]))

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
          f"warmup {size.warmup}, cooldown {cfg.cooldown_frac:.0%} {cfg.cooldown_shape}; cosine to 10% of peak")
    print(f"{'seed':>4} {'tokens/param':>12} {'branch val':>11} {'cosine val':>11} {'difference':>11}")
    worst = 0.0
    for seed, tpp, branch, cosine in rows:
        diff = branch / cosine - 1
        worst = max(worst, abs(diff))
        print(f"{seed:>4} {tpp:>12g} {branch:>11.4f} {cosine:>11.4f} {diff:>+10.2%}")
    print(f"largest |difference| {worst:.2%} (target <= 1.5%): {'PASS' if worst <= 0.015 else 'FAIL'}")
    print(f"FLOPs, these two milestones: branched / separate cosine = {branched / separate:.3f}x")
    print(f"FLOPs, the study's whole curve for this N ({len(whole.milestones)} milestones, 5..{max(args.tpp):g} "
          f"tokens/param): {whole_ratio:.3f}x (target <= 0.6x): {'PASS' if whole_ratio <= 0.6 else 'FAIL'}")
    print(f"runs kept in {out}")


if __name__ == "__main__":
    main()
