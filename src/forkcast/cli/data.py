"""The data's commands: what the declaration derives, validate, prepare, and new data arriving from the feed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forkcast import paths
from forkcast.cli.common import (
    EXIT_CHECK_FAILED,
    EXIT_USAGE,
    PARAMS_FILE,
    ParamsOption,
    fail,
    load_params,
    require,
    step,
)

app = typer.Typer()


@app.command()
def dataset(params_file: ParamsOption = PARAMS_FILE) -> None:
    """Show what dataset.yaml declares and what is derived from it: features, contract, baseline, checks."""
    from forkcast.data.describe import describe

    typer.echo(describe(load_params(params_file).dataset))


@app.command()
def validate(
    data: Annotated[Path | None, typer.Option(help="CSV to check (default: `file` in dataset.yaml).")] = None,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Check the raw data against the schema; write a JSON and Markdown report; exit 1 below the threshold."""
    from forkcast.config import ConfigError
    from forkcast.data.validation import validate_file, write_report

    params = load_params(params_file)
    source = data or params.dataset.file
    with step(f"validate {source}"):
        try:
            report = validate_file(source, params.validate_, params.dataset)
        except ConfigError as exc:
            raise fail(str(exc), EXIT_USAGE) from exc
        write_report(report, paths.VALIDATION_JSON, paths.VALIDATION_MD)
    typer.echo(
        f"{report.checks_passed}/{len(report.checks)} checks passed ({report.share_of_checks_passed:.1%}, "
        f"required {report.min_share_of_checks_passed:.1%}); {report.rows_passing_all_checks:,} of "
        f"{report.rows:,} rows pass every check. Report: {paths.VALIDATION_MD}"
    )
    if not report.passed:
        for check in report.failed_checks:
            detail = check.error or f"pass rate {check.pass_rate:.2%} < {check.min_pass_rate:.2%}"
            typer.echo(f"  FAILED {check.name}: {detail}", err=True)
        raise fail(f"data validation failed: see {paths.VALIDATION_MD}", EXIT_CHECK_FAILED)


@app.command()
def prepare(params_file: ParamsOption = PARAMS_FILE) -> None:
    """Build model features and split them by time into train, validation and test."""
    import pandera.pandas as pa

    from forkcast.data.prepare import (
        build_features,
        drop_failing_rows,
        measured,
        read_table,
        split_by_time,
        write_splits,
    )

    params = load_params(params_file)
    data = params.dataset
    require(data.file)
    with step("prepare"):
        try:
            raw, dropped = drop_failing_rows(read_table(data.file, data), data)
            prepared = build_features(raw, data)
            splits = split_by_time(prepared, params.split)
        except (ValueError, KeyError, pa.errors.SchemaError, pa.errors.SchemaErrors) as exc:
            raise fail(f"cannot prepare {data.file}: {exc}", EXIT_CHECK_FAILED) from exc
        inputs = measured(data.inputs(), prepared)
        write_splits(splits, {name: paths.prepared_split(name) for name in paths.SPLITS}, inputs, paths.PREPARED_INPUTS)
    if dropped:
        typer.echo(f"dropped {dropped:,} rows that fail a check the validation tolerated (see its report)")
    periods = data.inputs().rows
    for name, frame in splits.items():
        start, end = frame["timestamp"].min(), frame["timestamp"].max()
        typer.echo(f"{name:>10}: {len(frame):>6,} {periods}  {start:%Y-%m-%d} .. {end:%Y-%m-%d}")


@app.command("new-data")
def new_data(
    through: Annotated[
        str | None, typer.Option(help="Keep the feed up to the end of this month (YYYY-MM), e.g. 2011-02.")
    ] = None,
    next_month: Annotated[bool, typer.Option("--next-month", help="Append the month after the latest one.")] = False,
    feed: Annotated[
        Path | None, typer.Option(help="The full upstream feed to take months from (default: `feed` in dataset.yaml).")
    ] = None,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Simulate new data arriving: rewrite the training data from the feed, month by month."""
    from forkcast.data.arrivals import ArrivalError, arrive

    params = load_params(params_file)
    if (through is None) == (not next_month):
        raise fail("give exactly one of --through YYYY-MM or --next-month", EXIT_USAGE)
    source = feed or params.dataset.feed
    if source is None:
        raise fail(
            "no feed to take months from: put the full history under feed/ (`dvc add feed`) and name it as `feed` "
            "in dataset.yaml, or pass --feed FILE",
            EXIT_USAGE,
        )
    try:
        message = arrive(source, params.dataset.file, params.dataset.time, through)
    except ArrivalError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    typer.echo(message)
    typer.echo(
        "next: `dvc add data && dvc push data.dvc`, commit data.dvc (and .dvc/storage with the default remote), "
        "then `make run`"
    )
