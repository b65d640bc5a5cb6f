"""The model's commands: train, evaluate, register (with the quality gate), promote, and the run's summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from forkcast import paths
from forkcast.cli.common import (
    EXIT_CHECK_FAILED,
    EXIT_NOTHING_YET,
    EXIT_USAGE,
    PARAMS_FILE,
    ParamsOption,
    fail,
    load_params,
    read_inputs,
    read_splits,
    require,
    step,
    tracking_errors,
)

if TYPE_CHECKING:
    from forkcast.data.declaration import Inputs
    from forkcast.model.history import VersionHistory

app = typer.Typer()


@app.command()
def train(params_file: ParamsOption = PARAMS_FILE) -> None:
    """Fit the model pipeline; export and check ONNX; write metadata."""
    from forkcast.model import lineage
    from forkcast.model.train import OnnxMismatchError, save
    from forkcast.model.train import train as fit_model

    params = load_params(params_file)
    splits, inputs = read_splits(), read_inputs()
    with step(f"train {params.train.model} on {len(splits['train']):,} {inputs.rows}"):
        try:
            model = fit_model(params, splits, inputs, lineage.data_hash(paths.DATA_DVC))
        except OnnxMismatchError as exc:
            raise fail(str(exc), EXIT_CHECK_FAILED) from exc
        save(model, paths.MODEL_PICKLE, paths.MODEL_ONNX, paths.MODEL_METADATA)
    validation = model.metadata["metrics"]["validation"]
    typer.echo(
        f"validation RMSE {inputs.quantity(validation['rmse'])}, MAE {inputs.quantity(validation['mae'])}, "
        f"R² {validation['r2']:.3f}; ONNX matches within {model.metadata['onnx_max_gap_on_test']:.2g}"
    )


@app.command()
def evaluate(params_file: ParamsOption = PARAMS_FILE) -> None:
    """Score the model and the naive seasonal baseline on the test split; write metrics and plot data."""
    from forkcast.model.evaluate import evaluate as score
    from forkcast.model.evaluate import save
    from forkcast.model.train import load_pipeline

    params = load_params(params_file)
    require(paths.MODEL_PICKLE)
    splits, inputs = read_splits(), read_inputs()
    with step("evaluate"):
        pipeline = load_pipeline(paths.MODEL_PICKLE)
        evaluation = score(pipeline, splits["train"], splits["test"], inputs, params.dataset.seasonal_keys)
        save(evaluation, paths.METRICS_JSON, paths.PREDICTIONS_CSV, paths.ERROR_BY_CYCLE_CSV, paths.ERROR_BY_MONTH_CSV)
    typer.echo(metrics_table(evaluation.metrics, inputs))


@app.command()
def backtest(params_file: ParamsOption = PARAMS_FILE) -> None:
    """Rolling-origin backtest: the last folds of the data each in turn as test, model and baseline refitted before
    each; each metric's mean and spread (the quality gate judges these)."""
    from forkcast.model.backtest import BacktestError, all_rows, make_folds, save
    from forkcast.model.backtest import backtest as run_backtest

    params = load_params(params_file)
    splits, inputs = read_splits(), read_inputs()
    data = all_rows(splits)
    try:
        folds = make_folds(data["timestamp"], inputs.frequency, params.backtest)
    except BacktestError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    size = f"{params.backtest.fold_cycles} {inputs.frequency.cycle}s"
    if len(folds) < params.backtest.folds:
        typer.echo(
            f"warning: the data holds room for {len(folds)} of the {params.backtest.folds} backtest folds of {size} "
            "(each needs a fold's length of training before it): the gate judges those",
            err=True,
        )
    with step(f"backtest {params.train.model}: {len(folds)} folds of {size}, each trained on every earlier row"):
        result = run_backtest(
            params.train, data, inputs, folds, seasonal_keys=params.dataset.seasonal_keys,
            progress=lambda line: typer.echo(line, err=True),
        )  # fmt: skip
        save(result, paths.BACKTEST_JSON, paths.BACKTEST_CSV)
    typer.echo(backtest_table(result, inputs))


def backtest_table(result: dict[str, Any], inputs: Inputs) -> str:
    from forkcast.data.declaration import figure
    from forkcast.summary import versus_baseline

    title = f"backtest, {len(result['folds'])} folds"
    lines = [f"{title:<28}{'RMSE':>17}{'MAE':>17}   ({inputs.target.unit}, mean ± std over the folds)"]
    for label, values in (("model", result["model"]), ("seasonal baseline", result["baseline"])):
        cells = [f"{figure(values[m]['mean'])} ± {figure(values[m]['std'])}" for m in ("rmse", "mae")]
        lines.append(f"{label:<28}{cells[0]:>17}{cells[1]:>17}")
    lines.append(f"RMSE {versus_baseline(result['rmse_improvement_over_baseline'])} (mean over the folds)")
    return "\n".join(lines)


@app.command()
def refit(params_file: ParamsOption = PARAMS_FILE) -> None:
    """The model to build and serve: the evaluated settings fitted on every row up to the newest
    (train.refit_on_all), its ONNX export checked again."""
    from forkcast.model import lineage
    from forkcast.model.refit import refit as fit_all
    from forkcast.model.train import OnnxMismatchError, load, save

    params = load_params(params_file)
    require(paths.MODEL_PICKLE, paths.MODEL_ONNX, paths.MODEL_METADATA)
    splits, inputs = read_splits(), read_inputs()
    evaluated = load(paths.MODEL_PICKLE, paths.MODEL_ONNX, paths.MODEL_METADATA)
    rows = sum(len(frame) for frame in splits.values())
    what = f"refit on all {rows:,} {inputs.rows}" if params.train.refit_on_all else "keep the evaluated model"
    with step(what):
        try:
            model = fit_all(params, splits, inputs, evaluated, lineage.data_hash(paths.DATA_DVC))
        except OnnxMismatchError as exc:
            raise fail(str(exc), EXIT_CHECK_FAILED) from exc
        save(model, paths.SERVED_PICKLE, paths.SERVED_ONNX, paths.SERVED_METADATA)
    fitted = model.metadata["fitted_on"]
    typer.echo(
        f"the served model learned {fitted['rows']:,} {inputs.rows} ({fitted['start'][:10]}..{fitted['end'][:10]}); "
        f"ONNX matches within {model.metadata['onnx_max_gap_on_test']:.2g}"
    )


def metrics_table(metrics: dict[str, Any], inputs: Inputs) -> str:
    from forkcast.data.declaration import figure
    from forkcast.summary import versus_baseline

    periods = f"{metrics['test_rows']:,} {inputs.rows}"
    lines = [f"{'test set, ' + periods:<28}{'RMSE':>9}{'MAE':>9}{'R²':>8}   ({inputs.target.unit})"]
    for label, values in (("model", metrics["model"]), ("seasonal baseline", metrics["baseline"])):
        lines.append(f"{label:<28}{figure(values['rmse']):>9}{figure(values['mae']):>9}{values['r2']:>8.3f}")
    lines.append(f"RMSE {versus_baseline(metrics['rmse_improvement_over_baseline'])}")
    return "\n".join(lines)


@app.command()
def register(params_file: ParamsOption = PARAMS_FILE) -> None:
    """Log the run to MLflow, register a model version as `candidate`, and judge it against `production`."""
    from forkcast import atomic
    from forkcast.model import lineage
    from forkcast.model.backtest import all_rows
    from forkcast.model.gate import recipe_of
    from forkcast.model.registry import save_gate, track_and_register
    from forkcast.model.train import load_pipeline

    params = load_params(params_file)
    reports = [
        paths.VALIDATION_JSON, paths.VALIDATION_MD, paths.SERVED_METADATA, paths.METRICS_JSON, paths.BACKTEST_JSON,
        paths.SERVED_ONNX,
    ]  # fmt: skip
    require(paths.SERVED_PICKLE, *reports)
    if not atomic.read_json(paths.VALIDATION_JSON)["passed"]:
        raise fail(f"the data failed validation ({paths.VALIDATION_MD}): nothing is registered", EXIT_CHECK_FAILED)
    for stale in (paths.GATE_JSON, paths.GATE_MD):  # a failed run must not leave the last run's verdict as its own
        stale.unlink(missing_ok=True)
    inputs = read_inputs()
    metadata = atomic.read_json(paths.SERVED_METADATA)
    backtest = atomic.read_json(paths.BACKTEST_JSON)
    if backtest.get("recipe") != recipe_of(metadata):
        raise fail(
            f"{paths.BACKTEST_JSON} backtested other settings than the served model's ({paths.SERVED_METADATA}): "
            "run `dvc repro` so both follow params.yaml",
            EXIT_USAGE,
        )
    with step("register in MLflow and judge on the backtest's folds"), tracking_errors():
        registration = track_and_register(
            params=params,
            pipeline=load_pipeline(paths.SERVED_PICKLE),
            inputs=inputs,
            data=all_rows(read_splits()),
            backtest=backtest,
            evaluation=atomic.read_json(paths.METRICS_JSON),
            metadata=metadata,
            lineage=lineage.lineage(paths.DATA_DVC, paths.DVC_LOCK),
            artifacts=reports,
            local_dir=paths.LOCAL_MLFLOW_DIR,
            onnx=paths.SERVED_ONNX.read_bytes(),
            open_run=paths.OPEN_RUN,
        )  # fmt: skip
        save_gate(
            registration, paths.GATE_JSON, paths.GATE_MD, model_trained_at=metadata.get("trained_at"),
            unit=inputs.target.unit,
        )  # fmt: skip
    verdict = registration.verdict
    if registration.closed_run:
        typer.echo(f"marked run {registration.closed_run} FAILED: an earlier register left it open when the server "
                   "stopped answering")  # fmt: skip
    typer.echo(
        f"registered {registration.model_name} v{registration.version} (alias candidate); gate: "
        f"{'ELIGIBLE' if verdict.eligible else 'REJECTED'}"
    )
    for comparison in verdict.comparisons:
        typer.echo(f"  {comparison.sentence(verdict.metric)}")
    for note in verdict.notes:
        typer.echo(f"  {note}")


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="The registered model version to promote.")],
    force: Annotated[bool, typer.Option("--force", help="Promote even a version the gate rejected.")] = False,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Give a registered model version the `production` alias (later candidates are judged against it)."""
    from forkcast.model.registry import GateRefusedError
    from forkcast.model.registry import promote as set_alias

    params = load_params(params_file)
    with tracking_errors():
        try:
            set_alias(paths.LOCAL_MLFLOW_DIR, params, version, force=force)
        except GateRefusedError as exc:
            raise fail(str(exc), EXIT_CHECK_FAILED) from exc
    typer.echo(f"{params.tracking.registered_model} v{version} is now aliased 'production'")


@app.command()
def history(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of the table.")] = False,
    repo: Annotated[
        str | None,
        typer.Option(
            "--repo",
            metavar="OWNER/NAME",
            help="Read the GitHub Releases registry of this repository (its release manifests and deployments) "
            "instead of MLflow: a fork without a tracking server.",
        ),
    ] = None,
    last: Annotated[int, typer.Option("--last", min=1, help="Show the last N versions (releases with --repo).")] = 30,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Every registered model version: data hash, commit, params changed since the version before, metrics and
    backtest, data checks, gate verdict, aliases, and where and when it was deployed (and approved by whom)."""
    from forkcast.model import history as versions

    params = load_params(params_file)
    if repo is not None:
        found = _history_of_releases(repo, last)
        nothing_yet = f"no Forkcast release of {repo} carries a manifest yet: production publishes one when it "
        nothing_yet += "deploys a release (the Release workflow)"
    else:
        with tracking_errors():
            found = versions.read(paths.LOCAL_MLFLOW_DIR, params)[-last:]
        nothing_yet = f"no version of {params.tracking.registered_model} is registered yet"
        nothing_yet += ": run the pipeline (`dvc repro`)"
    if as_json:
        typer.echo(versions.to_json(found))
        return
    if not found:
        raise fail(nothing_yet, EXIT_NOTHING_YET)
    typer.echo(versions.render_table(found, params.gate.metric), nl=False)
    if repo is not None:
        typer.echo("roll back to a release: run the Rollback workflow with its tag (the second line of `version`)")


def _history_of_releases(repo: str, last: int) -> list[VersionHistory]:
    from forkcast.cli.common import github_errors, repo_name
    from forkcast.release import github
    from forkcast.release.github_registry import history_of, release_records

    target = repo_name(repo)
    with github_errors(), github.client() as gh:
        records, notes = release_records(gh, target, last)
    for note in notes:
        typer.echo(f"note: {note}", err=True)
    return history_of(records)


@app.command()
def summary() -> None:
    """Print the outcome of the last pipeline run: metrics vs baseline, validation, gate, MLflow run."""
    from forkcast.summary import pipeline_summary

    require(paths.VALIDATION_JSON)
    typer.echo(pipeline_summary())
