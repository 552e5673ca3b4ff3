"""`scalinglab sample`: continue a prompt with a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from scalinglab.cli.app import DEFAULT_DB, app, console


@app.command()
def sample(
    run: str = typer.Argument(..., help="Run directory, .pt checkpoint, or run id in the results store."),
    prompt: str = typer.Option(..., "--prompt", help="Text for the model to continue."),
    tokens: int = typer.Option(200, "--tokens", help="Tokens to generate."),
    temperature: float = typer.Option(0.8, "--temperature", help="Sampling temperature; 0 picks the likeliest token."),
    top_k: Optional[int] = typer.Option(40, "--top-k", help="Sample among the k likeliest tokens only."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same text."),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="Results store that knows run ids."),
) -> None:
    """Print a model's continuation of --prompt, reproducibly from --seed."""
    from scalinglab.sampling import sample as run_sample

    result = run_sample(run, prompt, tokens, temperature=temperature, top_k=top_k, seed=seed, db=db)
    top = "none" if result.top_k is None else str(result.top_k)
    console.print(f"{result.run_id} at step {result.step:,}: {result.tokens} tokens, temperature "
                  f"{result.temperature:g}, top-k {top}, seed {result.seed}", highlight=False, emoji=False)
    # emoji off too: generated text such as ":smile:" must print as it is
    console.print(result.prompt + result.text, highlight=False, emoji=False)
