"""Monitoring commands: drift reports, replayed traffic, endpoint probes and alerts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from forkcast import paths
from forkcast.cli.common import (
    EXIT_CHECK_FAILED,
    EXIT_NOTHING_YET,
    EXIT_USAGE,
    PARAMS_FILE,
    DryRunOption,
    ParamsOption,
    RepoOption,
    check_environment,
    fail,
    github_errors,
    inference_log_of,
    load_params,
    read_splits,
    repo_name,
    require,
    service_of,
    step,
    tracking_errors,
)

if TYPE_CHECKING:
    import datetime as dt

    import pandas as pd

    from forkcast.config import Params
    from forkcast.data.declaration import Dataset

app = typer.Typer()


@app.command()
def drift(
    *,
    env: Annotated[str, typer.Option("--env", help="Whose traffic to check: staging or production.")] = "production",
    sink: Annotated[
        str | None,
        typer.Option(
            help="Its inference log, a directory or s3://bucket/prefix (default: where `forkcast deploy` logs: "
            "serve.inference_log/ENV, or $FORKCAST_INFERENCE_LOG/ENV)."
        ),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(help="Training data to compare with (default: the prepared rows the served model was fitted on)."),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="Known outcomes, Parquet or CSV with columns request_id, position, actual "
            "(default: outputs/labels/ENV.parquet when it exists)."
        ),
    ] = None,
    window_days: Annotated[
        int | None, typer.Option("--window-days", min=1, help="Days of log to read (default: monitor.window_days).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="End of the window, ISO date or time, UTC unless given (default: now).")
    ] = None,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Compare recent traffic with the model's training data (Evidently); write outputs/drift/ENV/.

    Input drift per feature, prediction drift, data quality, and the error on labelled records. Writes
    report.html, drift.json and summary.md (replacing the previous report only once all are written).

    \b
    Exit codes:
      0  no drift
      1  drift: input drift share, prediction drift, or labelled RMSE above the allowed bound
      2  usage or configuration error (e.g. no reference data: run `dvc repro`)
      3  no production data yet: no log, or only smoke-test and probe traffic in the window
      4  the drift job itself failed (the error is printed; the previous report is kept)

    \b
    Labels file (Parquet or CSV), one row per predicted record, as `forkcast replay` writes it:
      request_id  the request's id, as logged (the x-request-id header)
      position    the record's index in that request, from 0
      actual      the target's true value (rows without one are ignored)
    """
    from forkcast.monitoring import drift as monitoring
    from forkcast.monitoring.drift.analysis import Context, analyse, no_data_result
    from forkcast.monitoring.drift.reference import load_reference, served_model
    from forkcast.monitoring.drift.report import write_outputs
    from forkcast.monitoring.drift.traffic import Window, parse_until, read_labels, read_traffic
    from forkcast.serving import deploy as deployments

    environment = check_environment(env)
    params = load_params(params_file)
    deployed = deployments.load(environment)
    # Where the running service logs, as its deployment recorded it; else where a deployment would log.
    log = sink or (deployed.inference_log if deployed else inference_log_of(params.serve.inference_log, environment))
    directory = monitoring.output_dir(environment)
    try:
        window = Window.ending(parse_until(until), window_days or params.monitor.window_days)
        context = Context(environment, log, window, params.monitor, params.dataset)
        label_file = labels or monitoring.default_labels(environment)
        known = read_labels(label_file) if label_file else None
        model, missing_model = served_model(environment)  # its own inputs say what its log holds
        with step(f"read {environment}'s inference log {log}"):
            traffic = read_traffic(log, window, model.inputs if model else params.dataset.inputs())
        if traffic.rows == 0:  # "no production data yet" needs no model
            outcome = no_data_result(context, traffic)
            write_outputs(directory, outcome, None)
            typer.echo(f"no production data yet: {outcome['reasons'][0]}.")
            typer.echo(f"next: {outcome['next']}. (Report: {directory / 'summary.md'})")
            raise typer.Exit(monitoring.EXIT_NO_DATA)
        if model is None:
            raise missing_model or monitoring.DriftError("no model to compare with")
        model.check_declared(params.dataset)
        with step("load the reference and the model's predictions on it"):
            baseline = load_reference(reference, model)  # by default the rows the served model learned
        with step(f"compare {traffic.rows:,} records with {len(baseline.frame):,} reference rows (Evidently)"):
            outcome, snapshot = analyse(context, traffic, baseline, known)
        write_outputs(directory, outcome, snapshot)
    except monitoring.DriftError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:  # never exit 1 for a crash: 1 means drift, and the nightly job acts on it
        raise fail(f"the drift job failed: {type(exc).__name__}: {exc}", monitoring.EXIT_FAILED) from exc
    for warning in outcome["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    sampled = f" (a sample of {outcome['rows']['compared']:,})" if outcome["rows"]["sampled"] else ""
    typer.echo(f"{environment}: {outcome['rows']['in_window']:,} records{sampled} vs {baseline.identity['path']}")
    typer.echo(f"report: {directory / 'summary.md'} and {directory / 'report.html'}")
    if outcome["verdict"] == monitoring.DRIFT:
        typer.echo("DRIFT: " + "; ".join(outcome["reasons"]))
        typer.echo("next: read the report; retrain on recent data (add it, then `make run`) or roll back")
        raise typer.Exit(monitoring.EXIT_DRIFT)
    typer.echo("no drift")


@app.command()
def replay(
    *,
    url: Annotated[str | None, typer.Option(help="Service URL to send the data to (or use --env).")] = None,
    env: Annotated[str | None, typer.Option("--env", help="Send it to the local staging or production.")] = None,
    start: Annotated[
        str | None,
        typer.Option(
            "--from", help="First date to replay, YYYY-MM-DD (default: the start of the model's test period)."
        ),
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="Last date to replay, included (default: the end of the test period).")
    ] = None,
    batch: Annotated[
        int | None, typer.Option(help="Records per request (default: one natural cycle, e.g. a day of hours).")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="Labels file to append to (default: outputs/labels/<env or adhoc>.parquet).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="The data to take rows from (default: `file` in dataset.yaml).")
    ] = None,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Send real rows of the data through a running service (request ids replay-...); keep their true values as labels.

    By default it replays the model's own test period (rows the evaluated model never trained on), one natural cycle
    per request.
    """
    import datetime as dt

    from forkcast.monitoring import replay as replaying
    from forkcast.serving import deploy as deployments

    params = load_params(params_file)
    dataset = params.dataset
    periods = dataset.inputs().rows
    target, environment = service_of(url, env)
    labels_file = labels or replaying.labels_path(environment)
    if labels_file.suffix != ".parquet":
        raise fail(f"--labels must be a .parquet file (the replay writes Parquet), not {labels_file}", EXIT_USAGE)
    source = data or dataset.file
    require(source)
    try:
        first, last = replaying.window(start, end, replaying.model_test_period(environment))
        if batch is not None:
            replaying.check_batch(batch)
        replaying.read_labels(labels_file)  # an unreadable labels file fails now, before anything is sent
        rows = _rows_between(dataset, source, first, last)
        size = batch or replaying.cycle_batch(rows, dataset.time.frequency.rows_per_cycle)
    except replaying.ReplayInputError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc

    def progress(sent: int, requests: int, seconds: float) -> None:
        rate = sent / seconds if seconds > 0 else 0.0
        typer.echo(f"  {sent:,}/{len(rows):,} {periods} sent in {requests:,} requests, {rate:,.0f} rows/s", err=True)

    typer.echo(f"replaying {len(rows):,} {periods} ({first}..{last}) to {target} in batches of {size}", err=True)
    started = dt.datetime.now(dt.UTC)
    records = replaying.to_records(rows, dataset.feature_names)
    result = replaying.replay(target, records, rows[dataset.target].astype(float).tolist(), size, progress=progress)
    total = replaying.append_labels(labels_file, result.labels) if result.rows else None
    kept = f"their labels were added to {labels_file}" if total else "no labels were written"
    stopped = result.stopped
    if stopped and stopped.reason == "unreachable" and not result.rows:
        where = f"--env {environment}`" if environment else "--env staging`, or start the service there"
        raise fail(
            f"nothing is deployed at {target}: run `forkcast deploy {where} ({stopped.detail})", EXIT_CHECK_FAILED
        )
    if stopped:
        raise fail(
            f"{stopped.detail}\n{result.rows:,} of {result.planned:,} {periods} were answered before it stopped; "
            f"{kept}. The rest were not sent.",
            EXIT_CHECK_FAILED,
        )
    rate = result.rows / result.seconds if result.seconds > 0 else 0.0
    typer.echo(
        f"replayed {result.rows:,} {periods} in {result.requests:,} requests in {result.seconds:.1f}s "
        f"({rate:,.0f} rows/s) to {target}; labels: {labels_file} ({total:,} rows in all)"
    )
    deployed = deployments.load(check_environment(environment)) if environment else None
    if deployed is not None:  # the service writes its log every few seconds: a drift report now must see it all
        with step(f"wait for {environment} to write them to its inference log"):
            logged = replaying.wait_until_logged(
                deployed.inference_log, set(result.answers["request_id"]), started - dt.timedelta(minutes=1)
            )
        if not logged:
            raise fail(f"{environment} has not logged every replayed record in {deployed.inference_log}", 1)


def _rows_between(dataset: Dataset, source: Path, first: dt.date, last: dt.date) -> pd.DataFrame:
    """The data's prepared rows (features, time, target) from `first` to `last`; ReplayInputError if unreadable."""
    import pandera.pandas as pa

    from forkcast.data.prepare import build_features, load_raw
    from forkcast.monitoring.replay import ReplayInputError, select_rows

    try:
        prepared = build_features(load_raw(source, dataset), dataset)
    except (ValueError, KeyError, pa.errors.SchemaError, pa.errors.SchemaErrors) as exc:
        raise ReplayInputError(f"cannot read the {dataset.inputs().rows} in {source}: {exc}") from exc
    return select_rows(prepared, first, last)


@app.command()
def compare(
    champion: Annotated[
        str | None,
        typer.Argument(
            help="The model to beat: a registry version or alias (3, production) or a bento or model tag "
            "(forkcast:v3-…). Default: production."
        ),
    ] = None,
    challenger: Annotated[
        str | None, typer.Argument(help="The model that challenges it, named the same ways. Default: candidate.")
    ] = None,
    *,
    start: Annotated[
        str | None,
        typer.Option(
            "--from", help="First date, YYYY-MM-DD (default: the champion's test period; with --log, the whole log)."
        ),
    ] = None,
    end: Annotated[str | None, typer.Option("--to", help="Last date, included.")] = None,
    log: Annotated[
        str | None,
        typer.Option(
            "--log",
            help="Compare what a service with a shadow challenger logged instead: staging, production, or an "
            "inference log (a directory or s3://bucket/prefix).",
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="With --log: true values, Parquet or CSV with request_id, position, actual (default: "
            "outputs/labels/ENV.parquet when it exists)."
        ),
    ] = None,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Champion against challenger: two models on the same inputs; write outputs/compare/ (report.md, compare.json,
    plot.svg).

    On a date range of the project's data (--from/--to) both models score the same rows; with --log, the answers and
    the shadow challenger's predictions a service logged are compared, on their labels where known (else only how far
    they agree). Each model's RMSE, MAE and bias overall and per seasonal key, which wins on gate.metric and by how
    much, and whether that difference stands out of the backtest's spread between folds.

    \b
    Exit codes:
      0  the report is written (whichever model won)
      2  usage error: an unknown version (the known ones are listed), bad dates, no prepared data
      3  nothing to compare yet: the log holds no challenger predictions
    """
    import datetime as dt

    from forkcast.monitoring import compare as comparing
    from forkcast.monitoring.replay import ReplayInputError, parse_date

    params = load_params(params_file)
    dataset = params.dataset
    keys, metric, unit = list(dataset.seasonal_keys), params.gate.metric, dataset.unit
    spread = comparing.backtest_spread(paths.BACKTEST_JSON, metric)
    try:
        if log is not None:
            if champion is not None or challenger is not None:
                raise fail("with --log, the versions are those the log holds: give no CHAMPION, CHALLENGER", EXIT_USAGE)
            day = dt.timedelta(days=1)
            since = dt.datetime.combine(parse_date(start, "--from"), dt.time(), dt.UTC) if start else None
            until = dt.datetime.combine(parse_date(end, "--to"), dt.time(), dt.UTC) + day if end else None
            sink, label_file = _log_of(log, params.serve.inference_log, labels)
            known = _labels(label_file)
            with step(f"read the inference log {sink}"):
                scored, first, second = comparing.score_on_log(sink, dataset.inputs(), keys, known, since=since,
                                                               until=until)  # fmt: skip
            report = comparing.compare(scored, first, second, keys=keys, metric=metric, spread=spread, unit=unit)
        else:
            report = _compare_on_data(
                champion or "production", challenger or "candidate", start=start, end=end, params=params, spread=spread
            )
    except comparing.NothingToCompareError as exc:
        raise fail(str(exc), EXIT_NOTHING_YET) from exc
    except (comparing.CompareError, ReplayInputError) as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    path = comparing.write(report)
    for warning in report["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(comparing.headline(report))
    if report["verdict"]:
        typer.echo(f"  {report['verdict']['statement']}")
    typer.echo(f"report: {path} (figures: compare.json; plot.svg)")


def _compare_on_data(
    champion: str, challenger: str, *, start: str | None, end: str | None, params: Params, spread: float | None
) -> dict[str, Any]:
    """Both models on the prepared rows from `start` to `end`."""
    import datetime as dt

    from forkcast.model.backtest import all_rows, cycle_length
    from forkcast.monitoring import compare as comparing
    from forkcast.monitoring.replay import select_rows, window
    from forkcast.serving import versions
    from forkcast.serving.build import BuildError

    dataset = params.dataset
    with step("load the two models"), tracking_errors():
        try:
            first_model, second_model = versions.resolve(champion, params), versions.resolve(challenger, params)
        except BuildError as exc:
            raise fail(str(exc), EXIT_USAGE) from exc
    period = first_model.source.lineage.get("test_period") or {}  # by default, the champion's test period
    recorded = None
    if period.get("start") and period.get("end"):
        recorded = dt.datetime.fromisoformat(period["start"]).date(), dt.datetime.fromisoformat(period["end"]).date()
    first, last = window(start, end, recorded)
    rows = select_rows(all_rows(read_splits()), first, last)
    sides = tuple(comparing.Side(found.label, found.model_version, found.source.lineage)
                  for found in (first_model, second_model))  # fmt: skip
    with step(f"score {len(rows):,} {dataset.inputs().rows} ({first}..{last}) with both"):
        scored = comparing.score_on_data(
            rows, ((sides[0], first_model.source), (sides[1], second_model.source)), dataset.seasonal_keys, first, last
        )
    length = cycle_length(dataset.inputs().frequency) * params.backtest.fold_cycles
    return comparing.compare(
        scored, sides[0], sides[1], keys=dataset.seasonal_keys, metric=params.gate.metric, spread=spread,
        unit=dataset.unit, block_length=length,
    )  # fmt: skip


def _log_of(log: str, root: str, labels: Path | None) -> tuple[str, Path | None]:
    """The inference log `--log` names (an environment's, or a directory or URI) and its labels file."""
    from forkcast.monitoring.drift import default_labels
    from forkcast.serving import deploy as deployments

    if log in deployments.ENVIRONMENTS:
        deployed = deployments.load(log)
        sink = deployed.inference_log if deployed else inference_log_of(root, log)
        return sink, labels or default_labels(log)
    return log, labels


def _labels(path: Path | None) -> pd.DataFrame | None:
    from forkcast.monitoring.compare import CompareError
    from forkcast.monitoring.drift import DriftError
    from forkcast.monitoring.drift.traffic import read_labels

    if path is None:
        return None
    try:
        return read_labels(path)
    except DriftError as exc:
        raise CompareError(str(exc)) from exc


@app.command()
def probe(
    url: Annotated[str | None, typer.Option(help="Service URL to probe (or use --env).")] = None,
    env: Annotated[str | None, typer.Option("--env", help="Probe the local staging or production deployment.")] = None,
    budget_ms: Annotated[
        float | None,
        typer.Option("--budget-ms", help="Latency budget of the one prediction (default: monitor.probe_budget_ms)."),
    ] = None,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Check a running service: /readyz, /livez, one timed prediction, /metrics; write outputs/probe/<env>.json."""
    from forkcast.monitoring import probe as probing

    budget = load_params(params_file).monitor.probe_budget_ms if budget_ms is None else budget_ms
    target, environment = service_of(url, env)
    if not budget > 0:
        raise fail(f"--budget-ms must be positive, not {budget:g}", EXIT_USAGE)
    report = probing.probe(target, budget, environment=environment)
    path = probing.save(report, probing.record_path(environment))
    typer.echo(probing.render_table(report))
    typer.echo(f"record: {path}")
    if not report.reachable:
        what = environment or "the service"
        hint = f"`forkcast status`, then `forkcast deploy --env {environment}`" if environment else "is it running?"
        raise fail(f"{what} does not answer at {target}: {hint}", EXIT_CHECK_FAILED)
    if not report.passed:
        raise fail(f"probe of {target} failed: {', '.join(report.failed)}", EXIT_CHECK_FAILED)


@app.command()
def alert(
    *,
    marker: Annotated[str, typer.Option(help="Hidden marker naming the problem, e.g. forkcast-drift.")],
    body_file: Annotated[Path, typer.Option("--body-file", help="Markdown: the issue body, or the clearing comment.")],
    title: Annotated[str, typer.Option(help="The issue's title (when the problem is on).")] = "",
    label: Annotated[list[str] | None, typer.Option(help="Labels for a new issue (repeatable).")] = None,
    cleared: Annotated[bool, typer.Option("--cleared", help="The problem is over: comment and close.")] = False,
    author: Annotated[
        str | None, typer.Option(help="Only an issue opened by this account counts (e.g. github-actions[bot]).")
    ] = None,
    repo: RepoOption = None,
    dry_run: DryRunOption = False,
) -> None:
    """Open or update ONE issue while a problem lasts; comment on it and close it when it clears."""
    from forkcast.monitoring import alert as alerts
    from forkcast.release import github

    target = repo_name(repo)
    body = body_file.read_text() if body_file.is_file() else ""
    if not body.strip():
        raise fail(f"no body in {body_file}: nothing to say", EXIT_USAGE)
    if not cleared and not title.strip():
        raise fail("--title is needed to open or update the issue", EXIT_USAGE)
    try:
        github.hidden_marker(marker)
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    with github_errors(), github.client(dry_run=dry_run, echo=typer.echo) as gh:
        if cleared:
            result = alerts.clear_alert(gh, target, marker, body, author)
        else:
            result = alerts.raise_alert(gh, target, marker, title=title, body=body, labels=label or [], author=author)
    if result.action == "issues off":
        _report_without_issues(target, title if not cleared else "cleared", body)
        return
    where = f"{target}#{result.number}" if result.number else target
    typer.echo(
        f"{'dry run: would have ' if result.dry_run else ''}{result.action}: {where} {result.url or ''}".rstrip()
    )


def _report_without_issues(repo: str, title: str, body: str) -> None:
    """Issues are off (a fork's default): say so as a workflow warning and put the alert in the job summary."""
    import os

    typer.echo(
        f"::warning::Issues are turned off in {repo}, so no issue was opened or closed; the alert is in this job's "
        "summary. Turn them on (Settings, General, Features, Issues) to get one issue per problem."
    )
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with Path(summary).open("a") as out:
            out.write(f"### {title}\n\n{body}\n")
    else:
        typer.echo(f"{title}\n{body}")
