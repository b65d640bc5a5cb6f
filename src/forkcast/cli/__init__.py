"""The `forkcast` command: one subcommand per pipeline stage, thin over the stage modules.

The commands are grouped by the stage of the line they serve (data, model, serving, release, monitoring); `--help`
lists them in that order. Heavy libraries are imported inside each command so that `forkcast --help` is instant.
Exit codes: 0 success, 1 the data or model failed a check (see the report), 2 bad usage or config.
"""

from __future__ import annotations

import sys

import typer

from forkcast.cli import batch, data, model, monitoring, release, serving, targets

app = typer.Typer(
    help="Forkcast: validate, prepare, train, evaluate and register a demand model; build, deploy, release and "
    "monitor it. Run the whole pipeline with `dvc repro` (or `make run`).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rendering it with rich costs half a second
)
for group in (data, model, serving, batch, release, targets, monitoring):
    app.add_typer(group.app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (for tests and `python -m forkcast`)."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv if argv is not None else sys.argv[1:], prog_name="forkcast")
    except SystemExit as exit_:  # standalone mode always exits, usage errors included
        if exit_.code is None:
            return 0
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0
