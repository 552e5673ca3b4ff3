"""`scalinglab probe ...`: the storage-vs-structure and phase-transition probes.

Each probe module registers its subcommand on `probe_app`.
"""

from __future__ import annotations

import typer

from scalinglab.cli.app import app

probe_app = typer.Typer(help="Probes of storage vs structure: capacity, memorisation, grokking, facts vs rules, repetition, the long tail, open book.",
                        no_args_is_help=True)
app.add_typer(probe_app, name="probe")
