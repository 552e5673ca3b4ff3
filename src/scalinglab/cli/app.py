"""The typer application and the small helpers every subcommand shares.

Subcommand modules import `app` and decorate their functions; they parse arguments, call the
library and print. Heavy imports (torch, pandas) happen inside the commands so that
`scalinglab --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(
    name="scalinglab",
    help="Measure the data-versus-parameters question of LM pretraining.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Markup off: paths and messages may contain [brackets] that must print as they are.
console = Console(markup=False, highlight=False, soft_wrap=True)
err_console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)

DEFAULT_DB = Path("scalinglab.db")

BACKEND_HELP = "Where runs execute: local (worker processes on this machine) or ray (a Ray cluster)."
ADDRESS_HELP = "Ray cluster to join: auto or HOST:PORT (default: $RAY_ADDRESS, else a private one here)."


def backend_spec(backend: str, address: str | None):
    from scalinglab.backends import BackendSpec

    return BackendSpec(name=backend, address=address)


# Every command that trains takes a TOML file of its config's fields and `--set` overrides;
# its own options default to None, so that every default lives in the config dataclass.
CONFIG_HELP = "TOML file of settings (the fields of the command's config; sections as tables)."
SET_HELP = "Override a setting: field=value or section.field=value, e.g. optim.lr=1e-3 (repeatable)."

DbOption = typer.Option(DEFAULT_DB, "--db", help="Results store (SQLite); created if missing.")

# Options several commands share: where runs' curves go, and corpora from Hugging Face data sets.
LOG_HELP = ("Also send every evaluation to tensorboard, wandb (offline) or both (tensorboard,wandb): an event "
            "folder in each run's directory (default: $SCALINGLAB_LOG).")
SPLIT_HELP = "Hugging Face data set corpora: the split to read (default train)."
MAX_BYTES_HELP = "Hugging Face data set corpora: read documents until this many bytes, e.g. 200M."
CORPUS_HELP = ("'stdlib' (default), a text file, a directory, .jsonl or .parquet, or a Hugging Face data set "
               "hf:NAME[:CONFIG] (a hub name or a local folder).")
TOKENIZER_HELP = "byte (default), bpe, a tokenizer.json file, or hf:NAME (a pretrained byte-level BPE)."


def parse_numbers(text: str, name: str) -> tuple[float, ...]:
    """Parse a comma-separated list of numbers ('1,4,16', '16k,1M'); refuses an empty one."""
    from scalinglab.errors import UserError

    values = tuple(parse_number(v.strip(), name) for v in text.split(",") if v.strip())
    if not values:
        raise UserError(f"{name} is empty; give comma-separated numbers, e.g. 1,4,16")
    return values


def parse_number(text: str, name: str) -> float:
    """Parse '2e6', '2M', '1.5k' style numbers given on the command line."""
    from scalinglab.errors import UserError

    suffixes = {"k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9, "t": 1e12}
    s = text.strip().lower().replace("_", "")
    scale = 1.0
    if s and s[-1] in suffixes:
        scale, s = suffixes[s[-1]], s[:-1]
    try:
        return float(s) * scale
    except ValueError:
        raise UserError(f"{name}: cannot read {text!r} as a number (examples: 2e6, 1.5M, 300k)") from None


def print_table(headers: list[str], rows: list[list[str]], title: str | None = None) -> None:
    """A table that never cuts a cell: as a table when every word of every cell fits the
    terminal (cells wrap between words), otherwise one block per row, its first cell as the block's head and
    the other cells as `header: value` pairs, which wrap as text in a narrow terminal or a log."""
    from rich.table import Table

    def least(header: str, i: int) -> int:  # the narrowest the column can be without cutting a word
        return max(len(w) for text in [header, *(r[i] for r in rows)] for w in (text.split() or [""]))

    need = sum(least(h, i) for i, h in enumerate(headers)) + 3 * len(headers) + 1
    if need <= console.width:
        table = Table(title=title)
        for i, header in enumerate(headers):
            table.add_column(header, overflow="fold", min_width=least(header, i))
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    if title:
        console.print(title)
    for head, *rest in rows:
        console.print(f"{headers[0]} {head}: " + "; ".join(f"{h} {v}" for h, v in zip(headers[1:], rest) if v != ""))


def use_log_option(text: str | None) -> None:
    """`--log`: check the sinks (a missing extra fails here, before anything is stored) and send
    this command's runs, and its workers', to them."""
    import os

    from scalinglab.train.sinks import LOG_ENV, parse_log, use_log

    if text is not None:
        use_log(parse_log(text))
    else:
        parse_log(os.environ.get(LOG_ENV))


def max_bytes_option(text: str | None) -> int | None:
    return None if text is None else int(parse_number(text, "--max-bytes"))
