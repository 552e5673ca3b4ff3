"""Command-line entry point: `scalinglab SUBCOMMAND ...`.

Every subcommand lives in its own module and registers itself on the shared `app`.
`main` turns a `UserError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

# Importing a module registers its subcommands.
from scalinglab.cli import compress as _compress  # noqa: F401
from scalinglab.cli import corpus as _corpus  # noqa: F401
from scalinglab.cli import laws as _laws  # noqa: F401
from scalinglab.cli import probe as _probe  # noqa: F401
from scalinglab.cli import probe_knowledge as _probe_knowledge  # noqa: F401
from scalinglab.cli import probe_phase as _probe_phase  # noqa: F401
from scalinglab.cli import probe_storage as _probe_storage  # noqa: F401
from scalinglab.cli import report as _report  # noqa: F401
from scalinglab.cli import sample as _sample  # noqa: F401
from scalinglab.cli import study as _study  # noqa: F401
from scalinglab.cli import train as _train  # noqa: F401
from scalinglab.cli.app import app, err_console
from scalinglab.errors import UserError


def main() -> None:
    try:
        # Standalone mode: click prints its own usage errors (exit 2) and turns typer.Exit into
        # the exit code; a UserError raised by the library comes through here.
        app()
    except UserError as exc:
        from rich.text import Text

        err_console.print(Text("error: ", style="bold red") + Text(str(exc)), soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


__all__ = ["app", "main"]
