"""Section 8, samples: one model size's text at every D milestone, from the same prompt and seed,
so a reader sees what more data bought."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scalinglab.errors import UserError
from scalinglab.report.document import Section, Table, num, provenance, size_label

SAMPLE_TOKENS = 160
TEMPERATURE = 0.8
TOP_K = 40
SEED = 0
FALLBACK_PROMPT = "The "


@dataclass
class SampleSettings:
    prompt: str | None = None  # None: the start of a line of the corpus's test split
    tokens: int = SAMPLE_TOKENS
    temperature: float = TEMPERATURE
    top_k: int | None = TOP_K
    seed: int = SEED
    n: int | None = None  # the model size; None: the study's largest


def build(study, settings: SampleSettings | None = None, cache_dir: Path | None = None) -> Section:
    from scalinglab.sampling import sample_model
    from scalinglab.train.checkpoint import load_model, tokenizer_from_checkpoint

    settings = settings or SampleSettings()
    section = Section(key="samples", title="Samples")
    if study is None or study.points.empty:
        section.missing = "Not measured yet: samples come from a study's checkpoints; run `scalinglab study`."
        return section
    sizes = sorted(study.by_n())
    n = settings.n if settings.n in sizes else sizes[-1]
    points = study.by_n()[n]
    runs = {r["run_id"]: r for r in study.runs}
    prompt = settings.prompt if settings.prompt is not None else test_prompt(runs[points["branch_run"].iloc[0]], cache_dir)
    rows, texts = [], []
    for point in points.itertuples():
        run = runs.get(point.branch_run)
        if not run or not run.get("out_dir") or not (Path(run["out_dir"]) / "last.pt").exists():
            continue
        model, state = load_model(run["out_dir"])
        text = sample_model(model, tokenizer_from_checkpoint(state), prompt, settings.tokens,
                            temperature=settings.temperature, top_k=settings.top_k, seed=settings.seed,
                            context=int(state["config"]["train"]["seq_len"]))
        rows.append([num(point.D), num(point.tokens_per_param), f"{point.val_loss:.4f}", text])
        texts.append({"D": float(point.D), "tokens_per_param": float(point.tokens_per_param), "text": text})
    if not rows:
        section.missing = f"The study's checkpoints for {size_label(n)} are gone (run folders moved or deleted); no samples."
        return section
    section.readings = [
        f"{size_label(n)} continues the prompt {prompt!r} with {settings.tokens} tokens at every D of the study "
        f"(temperature {settings.temperature:g}, top-k {settings.top_k or 'off'}, seed {settings.seed}); "
        "`scalinglab sample RUN --prompt ...` samples any run the same way."]
    section.tables = [Table(columns=["D (tokens)", "tokens/param", "val loss", "continuation"], rows=rows,
                            caption="Same prompt, same seed, one model size: only the training data differs.")]
    section.numbers = {"N": n, "prompt": prompt, "samples": texts, "temperature": settings.temperature,
                       "top_k": settings.top_k, "seed": settings.seed}
    section.provenance = [provenance("scalinglab study", [runs[p] for p in points["branch_run"] if p in runs],
                                     f"study {study.study_id}, cooldown branches of {size_label(n)}")]
    return section


def test_prompt(run: dict, cache_dir: Path | None = None, length: int = 48) -> str:
    """The start of a line of the run's test split (text no model trained on), cut at a space."""
    from scalinglab.compress.runs import run_info
    from scalinglab.corpus.prepare import split_bytes

    try:
        data = split_bytes(run_info(run["out_dir"]).corpus(cache_dir), "test")[:200_000]
    except (UserError, OSError):
        return FALLBACK_PROMPT
    text = data.decode("utf-8", errors="ignore")
    for line in text.splitlines():
        line = line.strip()
        if len(line) >= 24 and line.isprintable() and line[0].isalpha():  # code or prose, not a comment
            cut = line[:length]
            return cut[: cut.rfind(" ") + 1] if " " in cut[8:] else cut
    return FALLBACK_PROMPT
