"""The model's commands: train, evaluate, register (with the quality gate), promote, and the run's summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from forkcast import paths
from forkcast.cli.common import (
    EXIT_CHECK_FAILED,
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
    from forkcast.model.registry import save_gate, track_and_register
    from forkcast.model.train import load_pipeline

    params = load_params(params_file)
    reports = [paths.VALIDATION_JSON, paths.VALIDATION_MD, paths.MODEL_METADATA, paths.METRICS_JSON, paths.MODEL_ONNX]
    require(paths.MODEL_PICKLE, *reports)
    if not atomic.read_json(paths.VALIDATION_JSON)["passed"]:
        raise fail(f"the data failed validation ({paths.VALIDATION_MD}): nothing is registered", EXIT_CHECK_FAILED)
    test = read_splits()["test"]
    with step("register in MLflow"), tracking_errors():
        registration = track_and_register(
            params=params,
            pipeline=load_pipeline(paths.MODEL_PICKLE),
            inputs=read_inputs(),
            test=test,
            evaluation=atomic.read_json(paths.METRICS_JSON),
            metadata=atomic.read_json(paths.MODEL_METADATA),
            lineage=lineage.lineage(paths.DATA_DVC, paths.DVC_LOCK),
            artifacts=reports,
            local_dir=paths.LOCAL_MLFLOW_DIR,
        )  # fmt: skip
        trained_at = atomic.read_json(paths.MODEL_METADATA).get("trained_at")
        save_gate(registration, paths.GATE_JSON, paths.GATE_MD, model_trained_at=trained_at)
    verdict = registration.verdict
    typer.echo(
        f"registered {registration.model_name} v{registration.version} (alias candidate); gate: "
        f"{'ELIGIBLE' if verdict.eligible else 'REJECTED'}: {verdict.reason}"
    )


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
def summary() -> None:
    """Print the outcome of the last pipeline run: metrics vs baseline, validation, gate, MLflow run."""
    from forkcast.summary import pipeline_summary

    require(paths.VALIDATION_JSON)
    typer.echo(pipeline_summary())
