"""Batch scoring: `forkcast score` appends a dataset's predictions, with their lineage, to a database table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from forkcast.cli.common import PARAMS_FILE, ParamsOption, fail, load_params, require, step

if TYPE_CHECKING:
    from forkcast.batch.score import Batch, Progress, ProgressCallback, ScoringModel

app = typer.Typer()

PROGRESS_SECONDS = 5.0  # at most one progress line per this many seconds


@app.command()
def score(
    *,
    input_file: Annotated[
        str | None,
        typer.Option(
            "--input",
            help="A CSV or Parquet file of the model's inputs: a path, or a URL pyarrow reads (s3://...). "
            "Default: the project's data from --from to --to.",
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option("--from", help="First date to score, YYYY-MM-DD (default: the start of the model's test period)."),
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="Last date to score, included (default: the end of the test period).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="The data to take those dates from (default: `file` in dataset.yaml).")
    ] = None,
    bento_tag: Annotated[
        str | None, typer.Option("--bento", help="Bento whose model scores (default: the last build).")
    ] = None,
    table_name: Annotated[str, typer.Option("--table", help="Table to append to (SCHEMA.TABLE in PostgreSQL).")] = (
        "predictions"
    ),
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="SQLAlchemy URL: sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DATABASE (default: "
            "$FORKCAST_SCORE_DATABASE_URL, else sqlite:///outputs/predictions.db). Prefer the variable for a password.",
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated column(s) of --input that say what each row predicts (default: its `timestamp` "
            "column, else its position in the file)."
        ),
    ] = None,
    chunk_rows: Annotated[int, typer.Option(help="Rows per transaction.")] = 10_000,
    shard_text: Annotated[
        str | None,
        typer.Option("--shard", help="INDEX/COUNT: score only the rows whose position modulo COUNT is INDEX."),
    ] = None,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Score a dataset with a built bento's model; append the predictions, with their lineage, to a database table.

    History is kept: a row is never overwritten, a rerun adds no row twice (the key is the row's key, the model
    version and the bento) and an interrupted run resumes where it stopped.
    """
    import datetime as dt
    import os

    from forkcast.batch import score as scoring
    from forkcast.batch import table as tables

    try:
        if input_file is not None and (start or end or data):
            raise scoring.ScoringError("--from, --to and --data choose rows of the project's data, not of --input")
        if input_file is None and key:
            raise scoring.ScoringError("--key is for --input files: rows of the project's data are keyed by their time")
        given_url = database_url or os.environ.get(tables.URL_ENV) or None  # set but empty: the default
        url = tables.parse_url(given_url or tables.DEFAULT_URL)
        index, count = scoring.parse_shard(shard_text) if shard_text else (0, 1)
        scoring.check_chunk_rows(chunk_rows)
        tag = bento_tag or _last_build()
        with step(f"load the model of {tag}"):
            model = scoring.from_store(tag)
        if given_url is None:
            Path(url.database or "").parent.mkdir(parents=True, exist_ok=True)
        writer = tables.connect(url, table_name, model.inputs)
        with step("read and check the input"):
            if input_file is not None:
                frame, digest = scoring.read_file(input_file, model.inputs)
                keys = [name.strip() for name in key.split(",") if name.strip()] if key else []
                batch = scoring.batch_of(frame, model.inputs, source=_described(input_file, digest), key=keys,
                                         digest=digest)  # fmt: skip
            else:
                batch = _data_batch(model, start, end, data, params_file)
        part = scoring.shard(batch, index, count)
        if writer.create():
            typer.echo(f"created {writer.where}", err=True)
        sharded = f" (shard {index}/{count}: {len(part):,} of {len(batch):,} rows)" if count > 1 else ""
        typer.echo(f"scoring {len(part):,} rows of {batch.source}{sharded}, keyed by {batch.keyed_by}", err=True)
        result = scoring.score(
            model, part, writer, scored_at=dt.datetime.now(dt.UTC), chunk_rows=chunk_rows, progress=_progress_printer()
        )
    except scoring.ScoringError as exc:
        raise fail(str(exc), exc.exit_code) from exc
    rate = f" ({result.rows / result.seconds:,.0f} rows/s)" if result.seconds > 0 and result.added else ""
    typer.echo(
        f"{result.added:,} predictions of {model.info.model_name} v{model.info.model_version} ({model.bento}, "
        f"{model.info.backend}) added to {writer.where}; {result.already:,} were there already; "
        f"{result.seconds:.1f}s{rate}"
    )
    if url.get_backend_name() == "sqlite":
        typer.echo(
            f'query: sqlite3 {url.database} "SELECT period, prediction, model_version FROM {table_name} '
            f"WHERE bento = '{model.bento}' ORDER BY period LIMIT 5\""
        )


def _last_build() -> str:
    from forkcast import atomic
    from forkcast.batch.score import ScoringError
    from forkcast.serving import build as bento

    if not bento.BUILD_JSON.exists():
        raise ScoringError(f"no bento built yet ({bento.BUILD_JSON}): run `forkcast build` first, or give --bento")
    return str(atomic.read_json(bento.BUILD_JSON)["bento"])


def _described(location: str, digest: str) -> str:
    return f"{location} (sha256 {digest[:12]})"


def _data_batch(model: ScoringModel, start: str | None, end: str | None, data: Path | None, params_file: Path) -> Batch:
    """The project's data from `start` to `end` (default: the model's test period), prepared as the pipeline does."""
    import pandera.pandas as pa

    from forkcast.batch.score import InvalidInputError, ScoringError, batch_of
    from forkcast.data.prepare import UnusableDataError, build_features, drop_failing_rows, read_table
    from forkcast.monitoring.replay import ReplayInputError, select_rows, window

    dataset = load_params(params_file).dataset
    source = data or dataset.file
    require(source)
    try:
        first, last = window(start, end, model.test_period)
        table, dropped = drop_failing_rows(read_table(source, dataset), dataset)
        rows = select_rows(build_features(table, dataset), first, last)
    except ReplayInputError as exc:
        raise ScoringError(str(exc)) from exc
    except (UnusableDataError, ValueError, KeyError, pa.errors.SchemaError, pa.errors.SchemaErrors) as exc:
        raise InvalidInputError(f"{source} cannot be prepared: {exc}") from exc
    if dropped:
        typer.echo(
            f"note: {dropped:,} rows of {source} fail the data's checks (`forkcast validate`): not scored", err=True
        )
    return batch_of(rows, model.inputs, source=f"{source} {first}..{last}")


def _progress_printer() -> ProgressCallback:
    last = [time.monotonic()]

    def show(progress: Progress) -> None:
        now = time.monotonic()
        if now - last[0] < PROGRESS_SECONDS and progress.done < progress.total:
            return
        last[0] = now
        typer.echo(
            f"  {progress.done:,}/{progress.total:,} rows ({progress.added:,} added), {progress.rate:,.0f} rows/s",
            err=True,
        )

    return show
